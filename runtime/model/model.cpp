// Qwen3-MoE forward on one rank (semantics: docs/qwen3_moe.md, HF modeling_qwen3_moe.py).
// Invariant: step() issues the same collectives in the same order on every rank (one dispatch
// and one combine per MoE layer and micro-batch), whatever this rank's batch holds.
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
// A micro-batch: rows [row_begin, row_begin + num_rows) of the step, its sequences (row_begin
// counted from the part's first row) and their copy in backend memory.
struct Model::Part {
  int64_t row_begin = 0, num_rows = 0;
  std::vector<kernels::AttentionSeq> seqs;
  const kernels::AttentionSeq* dev_seqs = nullptr;
};

struct Model::Batch {
  int64_t num_tokens = 0;
  std::vector<int32_t> ids;        // [T]
  std::vector<TokenId> tokens;     // [T] global identity, for routing hooks
  std::vector<int32_t> positions;  // [T]
  std::vector<kernels::AttentionSeq> seqs;
  std::vector<int32_t> logit_rows;  // [n]
  bool graph_step = false;
  std::vector<Part> parts;  // one (the whole step), or two micro-batches (overlap)
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
      moe_(std::make_unique<MoeLayer>(config, comm, backend, instr_)),
      graphs_(backend),
      graphs_on_(backend.graphs() != nullptr) {
  moe_->set_placement(placement_);
}

void Model::set_exchange(const ExchangeSettings& settings) {
  auto first = std::make_unique<MoeLayer>(config_, comm_, backend_, instr_, settings.dispatcher);
  std::unique_ptr<MoeLayer> second;
  if (settings.overlap) {
    second = std::make_unique<MoeLayer>(config_, comm_, backend_, instr_, settings.dispatcher);
    second->set_placement(placement_);
  }
  first->set_placement(placement_);
  moe_ = std::move(first);
  moe_second_ = std::move(second);
  exchange_ = settings;
  graphs_.clear();  // graphs captured the old layer's buffers
}

void Model::set_graphs(bool on) {
  graphs_on_ = on;
  graphs_.clear();
}

Model::Batch Model::prepare(const std::vector<SeqStep>& seqs,
                            const std::vector<int64_t>& logit_rows, bool graph_step, bool overlap) {
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
  if (!overlap) {
    b.parts.push_back({0, T, b.seqs, seqs_.data()});
    return b;
  }
  // Two micro-batches: the first half of the sequences (rounded up), then the rest.
  const size_t split = (b.seqs.size() + 1) / 2;
  for (int i = 0; i < 2; ++i) {
    Part p;
    const size_t first = i == 0 ? 0 : split, last = i == 0 ? split : b.seqs.size();
    p.row_begin = first < b.seqs.size() ? b.seqs[first].row_begin : T;
    for (size_t q = first; q < last; ++q) {
      p.seqs.push_back(b.seqs[q]);
      p.seqs.back().row_begin -= p.row_begin;
      p.num_rows += b.seqs[q].num_new;
    }
    part_seqs_[i].assign(backend_, p.seqs.data(), p.seqs.size());
    p.dev_seqs = part_seqs_[i].data();
    b.parts.push_back(std::move(p));
  }
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
  const bool overlap = exchange_.overlap && comm_.size() > 1;
  const Batch b = prepare(seqs, logit_rows, graph_step, overlap);
  instr_.count_dense(T, b.seqs, n);
  instr_.start_step(!graph_step);  // phase marks would be recorded into a graph
  moe_->begin_step(num_steps_);
  if (moe_second_) moe_second_->begin_step(num_steps_);

  if (graph_step) {
    const StepGraphs::Key key{T, static_cast<int64_t>(b.seqs.size()), n};
    if (graphs_.run(
            key, [this] { return graph_fingerprint(); }, [&] { forward(b); })) {
      moe_->note_replayed();
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
  result.loads = moe_->collect_loads();
  if (moe_second_) {
    const std::vector<parallel::LayerLoad> second = moe_second_->collect_loads();
    for (size_t l = 0; l < second.size(); ++l) result.loads[l] += second[l];
  }
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
  if (b.parts.size() == 1) {
    for (int64_t l = 0; l < s.num_layers; ++l) {
      attention_block(l, b, b.parts[0]);
      mlp_block(l, b, b.parts[0]);
    }
  } else {
    forward_overlapped(b);
  }
  // Final norm + lm_head on the requested rows only.
  if (n > 0) {
    backend_.gather_rows(x_.data(), s.hidden, logit_rows_.data(), n, sel_.data());
    backend_.rmsnorm(sel_.data(), weights_.final_norm(), n, s.hidden, config_.rms_norm_eps,
                     sel_.data());
    backend_.linear(sel_.data(), weights_.lm_head(), n, s.hidden, s.vocab, logits_.data());
  }
}

void Model::forward_overlapped(const Batch& b) {
  const ModelShapes& s = shapes_;
  MoeLayer* moe[2] = {moe_.get(), moe_second_.get()};
  bf16* h_bf16 = backend_.takes_bf16_activations() ? h_bf16_.data() : nullptr;
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const LayerWeights& w = weights_.layer(l);
    // Micro-batch i finishes its previous combine (in flight while the other computed), runs its
    // attention and starts its exchange, which flies while the other one computes.
    for (int i = 0; i < 2; ++i) {
      const Part& p = b.parts[static_cast<size_t>(i)];
      const int64_t r0 = p.row_begin * s.hidden;
      if (moe[i]->in_flight()) moe[i]->finish(x_.data() + r0);
      attention_block(l, b, p);
      if (!w.is_moe) {
        mlp_block(l, b, p);
        continue;
      }
      const std::span<const TokenId> tokens(b.tokens.data() + p.row_begin,
                                            static_cast<size_t>(p.num_rows));
      moe[i]->start(static_cast<int>(l), w, h_.data() + r0, h_bf16 ? h_bf16 + r0 : nullptr, tokens);
    }
    if (w.is_moe) {
      for (MoeLayer* m : moe) m->compute(w);
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (moe[i]->in_flight())
      moe[i]->finish(x_.data() + b.parts[static_cast<size_t>(i)].row_begin * s.hidden);
  }
}

void Model::attention_block(int64_t l, const Batch& b, const Part& p) {
  const ModelShapes& s = shapes_;
  const LayerWeights& w = weights_.layer(l);
  const int64_t T = p.num_rows, r0 = p.row_begin;
  bf16* h_bf16 = backend_.takes_bf16_activations() ? h_bf16_.data() + r0 * s.hidden : nullptr;
  float* x = x_.data() + r0 * s.hidden;
  float* h = h_.data() + r0 * s.hidden;
  float* q = q_.data() + r0 * s.q_width;
  float* k = k_.data() + r0 * s.kv_width;
  float* v = v_.data() + r0 * s.kv_width;
  float* attn = attn_.data() + r0 * s.q_width;
  float* tmp = tmp_.data() + r0 * s.hidden;
  if (T > 0) {
    const float eps = config_.rms_norm_eps;
    backend_.rmsnorm(x, w.input_norm.data(), T, s.hidden, eps, h, h_bf16);
    backend_.qkv_projection(h, h_bf16, w.qkv_proj.view(), T, s.hidden, s.q_width, s.kv_width, q, k,
                            v);
    backend_.qk_norm_rope(q, k, w.q_norm.data(), w.k_norm.data(), positions_.data() + r0, T,
                          s.num_heads, s.num_kv_heads, s.head_dim, eps, config_.rope_theta);
    kernels::AttentionBatch batch;
    batch.seqs = p.dev_seqs;
    batch.host_seqs = b.graph_step ? nullptr : p.seqs.data();
    batch.num_seqs = static_cast<int64_t>(p.seqs.size());
    batch.num_rows = T;
    backend_.attention(q, k, v, batch, {s.num_heads, s.num_kv_heads, s.head_dim}, cache_.view(l),
                       attn);
    backend_.linear(attn, w.o_proj.view(), T, s.q_width, s.hidden, tmp);
    // h_bf16 = bf16(h) here too, for the GEMM after it (router or dense MLP).
    backend_.add_rmsnorm(x, tmp, w.post_norm.data(), T, s.hidden, eps, h, h_bf16);
  }
  instr_.mark(Phase::kAttention);
}

void Model::mlp_block(int64_t l, const Batch& b, const Part& p) {
  const ModelShapes& s = shapes_;
  const LayerWeights& w = weights_.layer(l);
  const int64_t T = p.num_rows, r0 = p.row_begin * s.hidden;
  if (w.is_moe) {  // experts across ranks; the combine adds the block's output to x
    const bf16* h_bf16 = backend_.takes_bf16_activations() ? h_bf16_.data() + r0 : nullptr;
    const std::span<const TokenId> tokens(b.tokens.data() + p.row_begin, static_cast<size_t>(T));
    moe_->run(static_cast<int>(l), w, h_.data() + r0, h_bf16, tokens, x_.data() + r0);
    return;
  }
  if (T > 0) {
    backend_.swiglu_mlp(h_.data() + r0, {w.mlp_gate.view(), w.mlp_up.view(), w.mlp_down.view()}, T,
                        s.hidden, s.dense_inter, tmp_.data() + r0);
  }
  instr_.mark(Phase::kDenseMlp);
  if (T > 0) backend_.add_inplace(x_.data() + r0, tmp_.data() + r0, T * s.hidden);
}

std::vector<const void*> Model::graph_fingerprint() {
  std::vector<const void*> f = {x_.data(),    h_.data(),         q_.data(),   k_.data(),
                                v_.data(),    attn_.data(),      tmp_.data(), h_bf16_.data(),
                                sel_.data(),  logits_.data(),    ids_.data(), positions_.data(),
                                seqs_.data(), logit_rows_.data()};
  const std::vector<const void*> m = moe_->buffers();
  f.insert(f.end(), m.begin(), m.end());
  if (const kernels::DeviceGraphs* graphs = backend_.graphs()) {
    f.push_back(reinterpret_cast<const void*>(static_cast<intptr_t>(graphs->memory_generation())));
  }
  return f;
}

PlacementChange Model::apply_placement(const parallel::Placement& next) {
  const PlacementChange change = weights_.apply_placement(placement_, next, comm_);
  placement_ = next;
  moe_->set_placement(placement_);
  if (moe_second_) moe_second_->set_placement(placement_);
  graphs_.clear();  // graphs captured the old weight and routing tables
  return change;
}

}  // namespace moe::runtime
