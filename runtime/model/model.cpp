// Qwen3-MoE forward on one rank (semantics: docs/qwen3_moe.md, HF modeling_qwen3_moe.py).
// Invariant: step() issues the same collectives in the same order on every rank (one dispatch
// and one combine per MoE layer), whatever this rank's batch holds.
#include "runtime/model/model.h"

#include <algorithm>

#include "kernels/common/check.h"

namespace moe::runtime {

ModelShapes::ModelShapes(const ModelConfig& c)
    : hidden(c.hidden_size),
      vocab(c.vocab_size),
      num_layers(c.num_hidden_layers),
      num_heads(c.num_attention_heads),
      num_kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim),
      q_width(c.q_width()),
      kv_width(c.kv_width()),
      expert_inter(c.moe_intermediate_size),
      dense_inter(c.intermediate_size),
      num_experts(c.num_experts),
      top_k(c.num_experts_per_tok) {}

// A step's metadata on the host; the same arrays are in the Model's backend buffers (ids_,
// positions_, seqs_, logit_rows_). A graph step withholds the host copies from the ops, so that
// nothing captured depends on values the host read.
struct Model::Batch {
  int64_t num_tokens = 0;
  std::vector<int32_t> ids;        // [T]
  std::vector<TokenId> tokens;     // [T] global identity, for routing hooks
  std::vector<int32_t> positions;  // [T]
  std::vector<kernels::AttentionSeq> seqs;
  std::vector<int32_t> logit_rows;  // [n]
  bool graph_step = false;
};

Model::Model(const ModelConfig& config, const parallel::Placement& placement,
             parallel::Communicator& comm, kernels::Backend& backend, WeightSource& weights,
             int64_t max_seqs, int64_t max_len, const Progress& progress)
    : config_(config),
      shapes_(config),
      placement_(placement),
      comm_(comm),
      backend_(backend),
      instr_(backend, config),
      cache_(config, backend, max_seqs, max_len),
      weights_(config, placement, comm.rank(), backend, weights, progress),
      moe_(config, comm, backend, instr_),
      graphs_(backend),
      graphs_on_(backend.graphs() != nullptr) {
  moe_.set_placement(placement_);
}

void Model::set_graphs(bool on) {
  graphs_on_ = on;
  graphs_.clear();
}

Model::Batch Model::prepare(const std::vector<SeqStep>& seqs,
                            const std::vector<int64_t>& logit_rows, bool graph_step) {
  const ModelShapes& s = shapes_;
  Batch b;
  b.graph_step = graph_step;
  for (const SeqStep& q : seqs) {
    const int64_t n = static_cast<int64_t>(q.tokens.size());
    cache_.check_fits(q.cache_slot, q.past_len + n);
    b.seqs.push_back({static_cast<int64_t>(b.ids.size()), n, q.past_len, q.cache_slot});
    for (int64_t i = 0; i < n; ++i) {
      b.ids.push_back(q.tokens[static_cast<size_t>(i)]);
      b.positions.push_back(static_cast<int32_t>(q.past_len + i));
      b.tokens.push_back({q.sequence, q.past_len + i});
    }
  }
  const int64_t T = b.num_tokens = static_cast<int64_t>(b.ids.size());
  b.logit_rows.assign(logit_rows.begin(), logit_rows.end());
  for (int32_t r : b.logit_rows)
    MOE_CHECK(r >= 0 && r < T, "logit row {} out of range [0, {})", r, T);
  for (int32_t id : b.ids) {
    MOE_CHECK(id >= 0 && id < s.vocab, "embedding: token id {} outside [0, {})", id, s.vocab);
  }

  const size_t rows = static_cast<size_t>(std::max<int64_t>(T, 1));
  const size_t n = std::max<size_t>(b.logit_rows.size(), 1);
  for (auto* buf : {&x_, &h_, &tmp_}) buf->ensure(backend_, rows * s.hidden);
  for (auto* buf : {&q_, &attn_}) buf->ensure(backend_, rows * s.q_width);
  for (auto* buf : {&k_, &v_}) buf->ensure(backend_, rows * s.kv_width);
  if (backend_.takes_bf16_activations()) h_bf16_.ensure(backend_, rows * s.hidden);
  sel_.ensure(backend_, n * s.hidden);
  logits_.ensure(backend_, n * s.vocab);
  ids_.assign(backend_, b.ids.data(), b.ids.size());
  positions_.assign(backend_, b.positions.data(), b.positions.size());
  seqs_.assign(backend_, b.seqs.data(), b.seqs.size());
  logit_rows_.assign(backend_, b.logit_rows.data(), b.logit_rows.size());
  return b;
}

StepResult Model::step(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows) {
  int64_t T = 0;
  for (const SeqStep& q : seqs) T += static_cast<int64_t>(q.tokens.size());
  const int64_t n = static_cast<int64_t>(logit_rows.size());
  GraphStepShape shape;
  shape.graphs_on = graphs_on_;
  shape.num_ranks = comm_.size();
  shape.num_tokens = T;
  shape.max_tokens = parallel::Dispatcher::kDeviceCountsMaxTokens;
  shape.logit_rows = n;
  shape.routing_hooks = instr_.has_routing_hooks();
  shape.hidden = shapes_.hidden;
  shape.expert_inter = shapes_.expert_inter;
  const bool graph_step = is_graph_step(shape, backend_.graphs());
  const Batch b = prepare(seqs, logit_rows, graph_step);
  instr_.count_dense(T, b.seqs, n);
  instr_.start_step(!graph_step);  // phase marks would be recorded into a graph
  moe_.begin_step(num_steps_);

  if (graph_step) {
    const StepGraphs::Key key{T, static_cast<int64_t>(b.seqs.size()), n};
    if (graphs_.run(
            key, [this] { return graph_fingerprint(); }, [&] { forward(b); })) {
      moe_.note_replayed();
    }
  } else {
    forward(b);
  }
  StepResult result;
  if (n > 0) {
    result.logits.resize(static_cast<size_t>(n * shapes_.vocab));
    backend_.download(result.logits.data(), logits_.data(), result.logits.size() * sizeof(float));
  }
  instr_.mark(Phase::kLmHead);
  // The loads of the step's MoE layers: one download of their counters, after the logits.
  result.loads = moe_.collect_loads();
  result.loads.resize(static_cast<size_t>(shapes_.num_layers));
  for (const parallel::LayerLoad& load : result.loads) {
    instr_.count_experts(load.traffic.pairs_received);
  }
  ++num_steps_;
  if (step_observer_) step_observer_(num_steps_ - 1, result);
  return result;
}

void Model::forward(const Batch& b) {
  const ModelShapes& s = shapes_;
  const int64_t T = b.num_tokens, n = static_cast<int64_t>(b.logit_rows.size());
  if (T > 0) backend_.embedding(weights_.embed(), s.vocab, s.hidden, ids_.data(), T, x_.data());
  instr_.mark(Phase::kEmbed);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    attention_block(l, b);
    mlp_block(l, b);
  }
  // Final norm + lm_head on the requested rows only.
  if (n > 0) {
    backend_.gather_rows(x_.data(), s.hidden, logit_rows_.data(), n, sel_.data());
    backend_.rmsnorm(sel_.data(), weights_.final_norm(), n, s.hidden, config_.rms_norm_eps,
                     sel_.data());
    backend_.linear(sel_.data(), weights_.lm_head(), n, s.hidden, s.vocab, logits_.data());
  }
}

void Model::attention_block(int64_t l, const Batch& b) {
  const ModelShapes& s = shapes_;
  const LayerWeights& w = weights_.layer(l);
  const int64_t T = b.num_tokens;
  bf16* h_bf16 = backend_.takes_bf16_activations() ? h_bf16_.data() : nullptr;
  if (T > 0) {
    const float eps = config_.rms_norm_eps;
    backend_.rmsnorm(x_.data(), w.input_norm.data(), T, s.hidden, eps, h_.data(), h_bf16);
    backend_.qkv_projection(h_.data(), h_bf16, w.qkv_proj.view(), T, s.hidden, s.q_width,
                            s.kv_width, q_.data(), k_.data(), v_.data());
    backend_.qk_norm_rope(q_.data(), k_.data(), w.q_norm.data(), w.k_norm.data(), positions_.data(),
                          T, s.num_heads, s.num_kv_heads, s.head_dim, eps, config_.rope_theta);
    kernels::AttentionBatch batch;
    batch.seqs = seqs_.data();
    batch.host_seqs = b.graph_step ? nullptr : b.seqs.data();
    batch.num_seqs = static_cast<int64_t>(b.seqs.size());
    batch.num_rows = T;
    backend_.attention(q_.data(), k_.data(), v_.data(), batch,
                       {s.num_heads, s.num_kv_heads, s.head_dim}, cache_.view(l), attn_.data());
    backend_.linear(attn_.data(), w.o_proj.view(), T, s.q_width, s.hidden, tmp_.data());
    // h_bf16 = bf16(h_) here too, for the GEMM after it (router or dense MLP).
    backend_.add_rmsnorm(x_.data(), tmp_.data(), w.post_norm.data(), T, s.hidden, eps, h_.data(),
                         h_bf16);
  }
  instr_.mark(Phase::kAttention);
}

void Model::mlp_block(int64_t l, const Batch& b) {
  const ModelShapes& s = shapes_;
  const LayerWeights& w = weights_.layer(l);
  const int64_t T = b.num_tokens;
  if (w.is_moe) {  // experts across ranks; the combine adds the block's output to x
    const bf16* h_bf16 = backend_.takes_bf16_activations() ? h_bf16_.data() : nullptr;
    moe_.run(static_cast<int>(l), w, h_.data(), h_bf16, b.tokens, x_.data());
    return;
  }
  if (T > 0) {
    backend_.swiglu_mlp(h_.data(), {w.mlp_gate.view(), w.mlp_up.view(), w.mlp_down.view()}, T,
                        s.hidden, s.dense_inter, tmp_.data());
  }
  instr_.mark(Phase::kDenseMlp);
  if (T > 0) backend_.add_inplace(x_.data(), tmp_.data(), T * s.hidden);
}

std::vector<const void*> Model::graph_fingerprint() {
  std::vector<const void*> f = {x_.data(),    h_.data(),         q_.data(),   k_.data(),
                                v_.data(),    attn_.data(),      tmp_.data(), h_bf16_.data(),
                                sel_.data(),  logits_.data(),    ids_.data(), positions_.data(),
                                seqs_.data(), logit_rows_.data()};
  const std::vector<const void*> m = moe_.buffers();
  f.insert(f.end(), m.begin(), m.end());
  if (const kernels::DeviceGraphs* graphs = backend_.graphs()) {
    f.push_back(reinterpret_cast<const void*>(static_cast<intptr_t>(graphs->memory_generation())));
  }
  return f;
}

PlacementChange Model::apply_placement(const parallel::Placement& next) {
  const PlacementChange change = weights_.apply_placement(placement_, next, comm_);
  placement_ = next;
  moe_.set_placement(placement_);
  graphs_.clear();  // graphs captured the old weight and routing tables
  return change;
}

}  // namespace moe::runtime
