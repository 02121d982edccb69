// Qwen3-MoE forward on one rank (semantics: docs/qwen3_moe.md, HF modeling_qwen3_moe.py).
// Invariant: step() issues the same collectives in the same order on every rank (one dispatch
// and one combine per MoE layer), whatever this rank's batch holds.
#include "runtime/model/model.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "kernels/common/check.h"

namespace moe::runtime {
namespace {

std::string layer_name(int64_t l, const std::string& suffix) {
  return fmt::format("model.layers.{}.{}", l, suffix);
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// FLOPs of a step that do not depend on the routing: everything but the experts (counted from the
// pairs each rank computes).
double dense_step_flops(const ModelConfig& c, const std::vector<bool>& layer_is_moe, int64_t T,
                        const std::vector<kernels::AttentionSeq>& seqs, int64_t logit_rows) {
  double f = 0;
  for (const bool moe : layer_is_moe) {
    if (T > 0) {
      f += projection_flops(c, T);
      for (const auto& a : seqs) f += attention_score_flops(c, a.num_new, a.past_len);
    }
    f += moe ? router_flops(c, T) : dense_mlp_flops(c, T);
  }
  if (logit_rows > 0) f += lm_head_flops(c, logit_rows);
  return f;
}

}  // namespace

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

double PhaseTimes::total() const {
  double t = 0;
  for (double v : seconds) t += v;
  return t;
}

FaultInjection FaultInjection::from_env() {
  FaultInjection f;
  const char* env = std::getenv("MOE_EP_FAULT");
  if (env == nullptr || *env == '\0') return f;
  std::stringstream ss(env);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto eq = item.find('=');
    MOE_CHECK_AS("config", eq != std::string::npos,
                 "MOE_EP_FAULT='{}': expected rank=R,layer=L[,mode=throw|hang]", env);
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    try {
      if (key == "rank")
        f.rank = std::stoi(value);
      else if (key == "layer")
        f.layer = std::stoi(value);
      else if (key == "mode")
        f.mode = value;
      else
        MOE_THROW("config", "MOE_EP_FAULT='{}': unknown key '{}'", env, key);
    } catch (const std::logic_error&) {
      MOE_THROW("config", "MOE_EP_FAULT='{}': '{}' is not a number", env, value);
    }
  }
  MOE_CHECK_AS("config", f.mode == "throw" || f.mode == "hang",
               "MOE_EP_FAULT='{}': mode must be throw or hang", env);
  return f;
}

kernels::Buffer<bf16> Model::load(WeightSource& w, const std::string& name,
                                  std::vector<int64_t> shape) {
  const int64_t n = numel(shape);
  std::vector<bf16> host(static_cast<size_t>(n));
  w.read(name, shape, host);
  kernels::Buffer<bf16> buf(backend_, static_cast<size_t>(n));
  backend_.upload(buf.data(), host.data(), buf.size_bytes());
  load_done_bytes_ += n * static_cast<int64_t>(sizeof(bf16));
  if (progress_) progress_(load_done_bytes_, load_total_bytes_);
  return buf;
}

kernels::Buffer<bf16> Model::load_stacked(WeightSource& w,
                                          const std::vector<std::pair<std::string, int64_t>>& parts,
                                          int64_t cols) {
  int64_t rows = 0;
  for (const auto& part : parts) rows += part.second;
  std::vector<bf16> host(static_cast<size_t>(rows * cols));
  int64_t at = 0;
  for (const auto& [name, part_rows] : parts) {
    const std::vector<int64_t> shape = {part_rows, cols};
    w.read(name, shape,
           std::span<bf16>(host).subspan(static_cast<size_t>(at * cols),
                                         static_cast<size_t>(part_rows * cols)));
    at += part_rows;
  }
  kernels::Buffer<bf16> buf(backend_, host.size());
  backend_.upload(buf.data(), host.data(), buf.size_bytes());
  load_done_bytes_ += rows * cols * static_cast<int64_t>(sizeof(bf16));
  if (progress_) progress_(load_done_bytes_, load_total_bytes_);
  return buf;
}

Model::Model(const ModelConfig& config, const parallel::Placement& placement,
             parallel::Communicator& comm, kernels::Backend& backend, WeightSource& weights,
             int64_t max_seqs, int64_t max_len, const Progress& progress)
    : config_(config),
      shapes_(config),
      placement_(placement),
      comm_(comm),
      backend_(backend),
      dispatcher_(comm, backend, config.hidden_size, static_cast<int>(config.num_experts_per_tok)),
      resident_(comm, backend, config.hidden_size, static_cast<int>(config.num_experts_per_tok)),
      routing_on_device_(!backend.is_host_memory()),
      fault_(FaultInjection::from_env()),
      max_seqs_(max_seqs),
      max_len_(max_len),
      kv_dtype_(backend.kv_cache_dtype()),
      progress_(progress) {
  const ModelShapes& s = shapes_;
  const int rank = comm.rank();
  MOE_CHECK(placement.num_layers() == s.num_layers, "placement has {} layers, model has {}",
            placement.num_layers(), s.num_layers);
  MOE_CHECK_AS("config", max_len <= config.max_position_embeddings,
               "sequence length {} exceeds max_position_embeddings {}", max_len,
               config.max_position_embeddings);

  // Sizes first, for the progress line.
  weights_ = rank_weights(config, placement, rank);
  load_total_bytes_ = weights_.total_bytes();
  timer_ = backend.make_phase_timer(kNumPhases);
  dispatcher_.set_timer(timer_.get(), static_cast<int>(Phase::kLayout),
                        static_cast<int>(Phase::kDispatch), static_cast<int>(Phase::kCombine));

  embed_ = load(weights, "model.embed_tokens.weight", {s.vocab, s.hidden});
  layers_.resize(static_cast<size_t>(s.num_layers));
  for (int64_t l = 0; l < s.num_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    L.input_norm = load(weights, layer_name(l, "input_layernorm.weight"), {s.hidden});
    L.post_norm = load(weights, layer_name(l, "post_attention_layernorm.weight"), {s.hidden});
    L.qkv_proj = load_stacked(weights,
                              {{layer_name(l, "self_attn.q_proj.weight"), s.q_width},
                               {layer_name(l, "self_attn.k_proj.weight"), s.kv_width},
                               {layer_name(l, "self_attn.v_proj.weight"), s.kv_width}},
                              s.hidden);
    L.o_proj = load(weights, layer_name(l, "self_attn.o_proj.weight"), {s.hidden, s.q_width});
    L.q_norm = load(weights, layer_name(l, "self_attn.q_norm.weight"), {s.head_dim});
    L.k_norm = load(weights, layer_name(l, "self_attn.k_norm.weight"), {s.head_dim});
    L.is_moe = config.layer_is_moe(l);
    if (L.is_moe) {
      L.router = load(weights, layer_name(l, "mlp.gate.weight"), {s.num_experts, s.hidden});
      for (int expert : placement.layer(static_cast<int>(l)).rank_experts[rank]) {
        ExpertBuf e;
        e.logical = expert;
        const std::string p = fmt::format("mlp.experts.{}.", expert);
        e.gate = load(weights, layer_name(l, p + "gate_proj.weight"), {s.expert_inter, s.hidden});
        e.up = load(weights, layer_name(l, p + "up_proj.weight"), {s.expert_inter, s.hidden});
        e.down = load(weights, layer_name(l, p + "down_proj.weight"), {s.hidden, s.expert_inter});
        L.experts.push_back(std::move(e));
      }
    } else {
      L.mlp_gate = load(weights, layer_name(l, "mlp.gate_proj.weight"), {s.dense_inter, s.hidden});
      L.mlp_up = load(weights, layer_name(l, "mlp.up_proj.weight"), {s.dense_inter, s.hidden});
      L.mlp_down = load(weights, layer_name(l, "mlp.down_proj.weight"), {s.hidden, s.dense_inter});
    }
    const size_t cache_bytes =
        static_cast<size_t>(max_seqs * max_len * s.kv_width * kernels::kv_dtype_bytes(kv_dtype_));
    L.k_cache = kernels::Buffer<unsigned char>(backend, cache_bytes);
    L.v_cache = kernels::Buffer<unsigned char>(backend, cache_bytes);
    kv_cache_bytes_ += static_cast<int64_t>(L.k_cache.size_bytes() + L.v_cache.size_bytes());
  }
  final_norm_ = load(weights, "model.norm.weight", {s.hidden});
  if (!config.tie_word_embeddings) lm_head_ = load(weights, "lm_head.weight", {s.vocab, s.hidden});
  layer_is_moe_ = config.moe_layers();
  graphs_enabled_ = backend.supports_graphs();
  refresh_slot_tables();
}

void Model::set_routing_on_device(bool on) {
  routing_on_device_ = on;
}

void Model::refresh_slot_tables() {
  for (Layer& L : layers_) {
    if (!L.is_moe) continue;
    L.slot_weights.clear();
    for (const ExpertBuf& e : L.experts) {
      L.slot_weights.push_back({e.gate.data(), e.up.data(), e.down.data()});
    }
    L.slot_weights_dev = kernels::Buffer<kernels::ExpertWeights>(
        backend_, std::max<size_t>(L.slot_weights.size(), 1));
    if (!L.slot_weights.empty()) {
      backend_.upload(L.slot_weights_dev.data(), L.slot_weights.data(),
                      L.slot_weights.size() * sizeof(kernels::ExpertWeights));
    }
  }
  resident_.set_placement(placement_);
  drop_graphs();  // graphs captured the old weight tables
}

const PhaseTimes& Model::times() {
  timer_->collect(times_.seconds);
  return times_;
}

void Model::moe_block(int layer, const float* h, std::span<const TokenId> tokens, float* y,
                      parallel::LayerLoad& load) {
  const ModelShapes& s = shapes_;
  Layer& L = layers_[static_cast<size_t>(layer)];
  const int64_t T = static_cast<int64_t>(tokens.size());

  router_logits_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(T, 1) * s.num_experts));
  std::vector<int32_t> ids(static_cast<size_t>(T * s.top_k));
  std::vector<float> weights(static_cast<size_t>(T * s.top_k));
  if (T > 0) {
    // h_bf16_ holds bf16(h) where the backend takes bf16 activations (written by add_rmsnorm).
    backend_.linear_rounded(h, backend_.takes_bf16_activations() ? h_bf16_.data() : nullptr,
                            L.router.data(), T, s.hidden, s.num_experts, router_logits_.data());
    backend_.router_topk(router_logits_.data(), T, s.num_experts, s.top_k, config_.norm_topk_prob,
                         ids.data(), weights.data());
  }
  if (routing_hook_ != nullptr) routing_hook_->route(num_steps_, layer, tokens, ids, weights);
  mark(Phase::kRouter);

  const parallel::LayerPlacement& lp = placement_.layer(layer);
  parallel::DispatchResult r = dispatcher_.dispatch(h, T, ids, weights, lp);

  // Expert compute: one group per local slot, all its rows in one GEMM per projection.
  const auto& batch = r.batch;
  const int64_t num_pairs = static_cast<int64_t>(batch.row_index.size());
  std::vector<kernels::ExpertGroup> groups;
  groups.reserve(L.experts.size());
  for (size_t slot = 0; slot < L.experts.size(); ++slot) {
    const int64_t begin = batch.slot_begin[slot], end = batch.slot_begin[slot + 1];
    if (end == begin) continue;
    const ExpertBuf& e = L.experts[slot];
    groups.push_back({{e.gate.data(), e.up.data(), e.down.data()}, begin, end - begin});
  }
  expert_out_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(num_pairs, 1) * s.hidden));
  if (num_pairs > 0) {
    backend_.grouped_expert_swiglu(r.recv_rows, s.hidden, s.expert_inter, groups.data(),
                                   static_cast<int64_t>(groups.size()), batch.row_index.data(),
                                   expert_out_.data());
  }
  last_step_flops_ += expert_flops(config_, num_pairs);
  mark(Phase::kExpert);

  dispatcher_.combine(expert_out_.data(), r, y);

  load = parallel::local_layer_load(r.layout, dispatcher_.last_stats());
}

void Model::moe_block_on_device(int layer, const float* h, std::span<const TokenId> tokens,
                                float* x) {
  const ModelShapes& s = shapes_;
  Layer& L = layers_[static_cast<size_t>(layer)];
  const int64_t T = static_cast<int64_t>(tokens.size());
  const size_t pairs = static_cast<size_t>(std::max<int64_t>(T, 1) * s.top_k);
  router_logits_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(T, 1) * s.num_experts));
  topk_ids_.ensure(backend_, pairs);
  topk_weights_.ensure(backend_, pairs);
  if (T > 0) {
    // h_bf16_ holds bf16(h) where the backend takes bf16 activations (written by add_rmsnorm).
    backend_.linear_rounded(h, backend_.takes_bf16_activations() ? h_bf16_.data() : nullptr,
                            L.router.data(), T, s.hidden, s.num_experts, router_logits_.data());
    backend_.router_topk_resident(router_logits_.data(), T, s.num_experts, s.top_k,
                                  config_.norm_topk_prob, topk_ids_.data(), topk_weights_.data());
  }
  if (routing_hook_ != nullptr) {
    // Hooks (traces, forced routings) read and may rewrite the routing on the host.
    const size_t n = static_cast<size_t>(T * s.top_k);
    std::vector<int32_t> ids(n);
    std::vector<float> weights(n);
    if (n > 0) {
      backend_.download(ids.data(), topk_ids_.data(), n * sizeof(int32_t));
      backend_.download(weights.data(), topk_weights_.data(), n * sizeof(float));
    }
    routing_hook_->route(num_steps_, layer, tokens, ids, weights);
    if (n > 0) {
      backend_.upload(topk_ids_.data(), ids.data(), n * sizeof(int32_t));
      backend_.upload(topk_weights_.data(), weights.data(), n * sizeof(float));
    }
  }
  mark(Phase::kRouter);

  const parallel::ResidentDispatch d =
      resident_.dispatch(layer, h, T, topk_ids_.data(), topk_weights_.data());
  mark(Phase::kDispatch);

  kernels::ResidentExpertBatch batch;
  batch.row_index = d.row_index;
  batch.slot_begin = d.slot_begin;
  batch.slot_weights = L.slot_weights_dev.data();
  batch.host_slot_weights = L.slot_weights.data();
  batch.num_slots = d.num_slots;
  batch.max_pairs = d.max_pairs;
  batch.host_slot_begin = d.host_slot_begin.empty() ? nullptr : d.host_slot_begin.data();
  expert_out_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(d.max_pairs, 1) * s.hidden));
  if (d.max_pairs > 0) {
    backend_.expert_swiglu_resident(d.recv_rows, s.hidden, s.expert_inter, batch,
                                    expert_out_.data());
  }
  // The FLOPs of the pairs computed are counted from the loads (collect_loads).
  mark(Phase::kExpert);

  resident_.combine_add(expert_out_.data(), d, x);
  mark(Phase::kCombine);
}

void Model::set_graphs(bool on) {
  graphs_enabled_ = on;
  drop_graphs();
}

void Model::drop_graphs() {
  backend_.drop_graphs();
  graphs_.clear();
}

std::vector<const void*> Model::graph_fingerprint() const {
  std::vector<const void*> f = {x_.data(),
                                h_.data(),
                                q_.data(),
                                k_.data(),
                                v_.data(),
                                attn_.data(),
                                tmp_.data(),
                                router_logits_.data(),
                                expert_out_.data(),
                                sel_.data(),
                                logits_.data(),
                                topk_ids_.data(),
                                topk_weights_.data(),
                                positions_.data(),
                                h_bf16_.data(),
                                step_ids_.data(),
                                step_logit_rows_.data(),
                                step_seqs_.data()};
  const std::vector<const void*> r = resident_.buffers();
  f.insert(f.end(), r.begin(), r.end());
  f.push_back(reinterpret_cast<const void*>(static_cast<intptr_t>(backend_.memory_generation())));
  return f;
}

void Model::run_as_graph(int64_t tokens, int64_t num_seqs, int64_t logit_rows,
                         const std::function<void()>& forward) {
  // A batch shape seen for the first time runs eagerly (its buffers grow to size); the next
  // step of that shape is captured, then every later one replays. A graph whose buffers have
  // moved since (a larger batch grew them) is captured again.
  const std::array<int64_t, 3> key{tokens, num_seqs, logit_rows};
  GraphEntry* entry = nullptr;
  for (GraphEntry& g : graphs_) {
    if (g.key == key) entry = &g;
  }
  if (entry == nullptr) {
    graphs_.push_back({key, {}, -1});
    forward();
    graphs_.back().fingerprint = graph_fingerprint();
    return;
  }
  if (entry->handle >= 0 && entry->fingerprint == graph_fingerprint()) {
    backend_.launch_graph(entry->handle);
    resident_.note_replayed();
    ++graph_replays_;
    return;
  }
  if (entry->fingerprint != graph_fingerprint()) {  // buffers moved: warm up again
    entry->handle = -1;
    forward();
    entry->fingerprint = graph_fingerprint();
    return;
  }
  backend_.begin_capture();
  try {
    forward();
    entry->handle = backend_.end_capture();
  } catch (...) {
    backend_.abort_capture();
    throw;
  }
  MOE_CHECK(entry->fingerprint == graph_fingerprint(),
            "a buffer moved while the step was captured as a device graph");
  ++graph_captures_;
  backend_.launch_graph(entry->handle);
  ++graph_replays_;
}

StepResult Model::step(const std::vector<SeqStep>& seqs, const std::vector<int64_t>& logit_rows) {
  const ModelShapes& s = shapes_;
  if (routing_on_device_) resident_.begin_step();

  // Host-side batch description.
  std::vector<int32_t> ids;
  std::vector<TokenId> token_ids;
  std::vector<int32_t> positions;
  std::vector<kernels::AttentionSeq> attn_seqs;
  for (const SeqStep& q : seqs) {
    MOE_CHECK(q.cache_slot >= 0 && q.cache_slot < max_seqs_, "cache slot {} out of range [0, {})",
              q.cache_slot, max_seqs_);
    MOE_CHECK_AS("input", q.past_len + static_cast<int64_t>(q.tokens.size()) <= max_len_,
                 "sequence of {} tokens exceeds the context of {} this run was sized for",
                 q.past_len + static_cast<int64_t>(q.tokens.size()), max_len_);
    attn_seqs.push_back({static_cast<int64_t>(ids.size()), static_cast<int64_t>(q.tokens.size()),
                         q.past_len, q.cache_slot});
    for (size_t i = 0; i < q.tokens.size(); ++i) {
      ids.push_back(q.tokens[i]);
      positions.push_back(static_cast<int32_t>(q.past_len + static_cast<int64_t>(i)));
      token_ids.push_back({q.sequence, q.past_len + static_cast<int64_t>(i)});
    }
  }
  const int64_t T = static_cast<int64_t>(ids.size());
  const size_t rows = static_cast<size_t>(std::max<int64_t>(T, 1));
  x_.ensure(backend_, rows * s.hidden);
  h_.ensure(backend_, rows * s.hidden);
  q_.ensure(backend_, rows * s.q_width);
  k_.ensure(backend_, rows * s.kv_width);
  v_.ensure(backend_, rows * s.kv_width);
  attn_.ensure(backend_, rows * s.q_width);
  tmp_.ensure(backend_, rows * s.hidden);
  // Positions go to backend memory once per step (every layer's qk_norm_rope reads them there).
  positions_.ensure(backend_, rows);
  if (T > 0)
    backend_.upload(positions_.data(), positions.data(), positions.size() * sizeof(int32_t));
  // bf16 copies of the normed activations, written by the norms for the GEMMs after them.
  bf16* h_bf16 = nullptr;
  if (backend_.takes_bf16_activations()) {
    h_bf16_.ensure(backend_, rows * s.hidden);
    h_bf16 = h_bf16_.data();
  }

  StepResult result;
  result.loads.resize(static_cast<size_t>(s.num_layers));
  const int64_t n = static_cast<int64_t>(logit_rows.size());
  std::vector<int32_t> idx(logit_rows.begin(), logit_rows.end());
  for (int32_t r : idx) MOE_CHECK(r >= 0 && r < T, "logit row {} out of range [0, {})", r, T);
  for (int32_t id : ids) {
    MOE_CHECK(id >= 0 && id < s.vocab, "embedding: token id {} outside [0, {})", id, s.vocab);
  }
  sel_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(n, 1) * s.hidden));
  logits_.ensure(backend_, static_cast<size_t>(std::max<int64_t>(n, 1) * s.vocab));
  last_step_flops_ = dense_step_flops(config_, layer_is_moe_, T, attn_seqs, n);

  // A graph step keeps every op's metadata in backend memory (uploaded here, once), so it can be
  // captured as a device graph and replayed; on a backend without graphs it runs eagerly.
  const bool graph_step = graphs_enabled_ && comm_.size() == 1 && routing_on_device_ && T > 0 &&
                          T <= parallel::ResidentDispatcher::kDeviceCountsMaxTokens && n > 0 &&
                          routing_hook_ == nullptr && fault_.layer < 0;
  if (graph_step) {
    step_ids_.ensure(backend_, rows);
    step_logit_rows_.ensure(backend_, static_cast<size_t>(n));
    step_seqs_.ensure(backend_, attn_seqs.size());
    backend_.upload(step_ids_.data(), ids.data(), ids.size() * sizeof(int32_t));
    backend_.upload(step_logit_rows_.data(), idx.data(), idx.size() * sizeof(int32_t));
    backend_.upload(step_seqs_.data(), attn_seqs.data(),
                    attn_seqs.size() * sizeof(kernels::AttentionSeq));
  }
  timing_on_ = !graph_step;  // phase marks would be recorded into the graph
  if (timing_on_) timer_->start();

  // Everything the device computes in this step, up to the logits.
  const auto forward = [&] {
    if (T > 0 && graph_step) {
      backend_.embedding_resident(embed_.data(), s.vocab, s.hidden, step_ids_.data(), T, x_.data());
    } else if (T > 0) {
      backend_.embedding(embed_.data(), s.vocab, s.hidden, ids.data(), T, x_.data());
    }
    mark(Phase::kEmbed);

    for (int64_t l = 0; l < s.num_layers; ++l) {
      Layer& L = layers_[static_cast<size_t>(l)];
      if (fault_.layer == l && fault_.rank == comm_.rank()) {
        if (fault_.mode == "hang") {
          // Simulates a stuck rank: the others must time out and end the job.
          for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
        }
        MOE_THROW("fault", "injected fault at layer {} (MOE_EP_FAULT)", l);
      }

      // Attention block (data-parallel replica).
      if (T > 0) {
        backend_.rmsnorm_rounded(x_.data(), L.input_norm.data(), T, s.hidden, config_.rms_norm_eps,
                                 h_.data(), h_bf16);
        backend_.qkv_projection(h_.data(), h_bf16, L.qkv_proj.data(), T, s.hidden, s.q_width,
                                s.kv_width, q_.data(), k_.data(), v_.data());
        backend_.qk_norm_rope(q_.data(), k_.data(), L.q_norm.data(), L.k_norm.data(),
                              positions_.data(), T, s.num_heads, s.num_kv_heads, s.head_dim,
                              config_.rms_norm_eps, config_.rope_theta);
        kernels::KvCacheView cache{L.k_cache.data(), L.v_cache.data(), max_seqs_, max_len_,
                                   kv_dtype_};
        if (graph_step) {
          backend_.attention_resident(q_.data(), k_.data(), v_.data(), step_seqs_.data(),
                                      static_cast<int64_t>(attn_seqs.size()), T,
                                      {s.num_heads, s.num_kv_heads, s.head_dim}, cache,
                                      attn_.data());
        } else {
          backend_.attention(q_.data(), k_.data(), v_.data(), attn_seqs.data(),
                             static_cast<int64_t>(attn_seqs.size()),
                             {s.num_heads, s.num_kv_heads, s.head_dim}, cache, attn_.data());
        }
        backend_.linear(attn_.data(), L.o_proj.data(), T, s.q_width, s.hidden, tmp_.data());
        // h_bf16 = bf16(h_) here too, for the GEMM after it (router or dense MLP).
        backend_.add_rmsnorm(x_.data(), tmp_.data(), L.post_norm.data(), T, s.hidden,
                             config_.rms_norm_eps, h_.data(), h_bf16);
      }
      mark(Phase::kAttention);

      // MLP block: experts across ranks, or a dense SwiGLU.
      if (L.is_moe && routing_on_device_) {
        moe_block_on_device(static_cast<int>(l), h_.data(), token_ids, x_.data());
        continue;  // the combine added the block's output to x
      }
      if (L.is_moe) {
        moe_block(static_cast<int>(l), h_.data(), token_ids, tmp_.data(), result.loads[l]);
      } else {
        if (T > 0) {
          backend_.swiglu_mlp(h_.data(), {L.mlp_gate.data(), L.mlp_up.data(), L.mlp_down.data()}, T,
                              s.hidden, s.dense_inter, tmp_.data());
        }
        mark(Phase::kDenseMlp);
      }
      if (T > 0) backend_.add_inplace(x_.data(), tmp_.data(), T * s.hidden);
    }

    // Final norm + lm_head on the requested rows only.
    if (n > 0) {
      if (graph_step) {
        backend_.gather_rows_resident(x_.data(), s.hidden, step_logit_rows_.data(), n, sel_.data());
      } else {
        backend_.gather_rows(x_.data(), s.hidden, idx.data(), n, sel_.data());
      }
      backend_.rmsnorm(sel_.data(), final_norm_.data(), n, s.hidden, config_.rms_norm_eps,
                       sel_.data());
      const bf16* head = config_.tie_word_embeddings ? embed_.data() : lm_head_.data();
      backend_.linear(sel_.data(), head, n, s.hidden, s.vocab, logits_.data());
    }
  };
  if (graph_step && backend_.supports_graphs()) {
    run_as_graph(T, static_cast<int64_t>(attn_seqs.size()), n, forward);
  } else {
    forward();
  }
  if (n > 0) {
    result.logits.resize(static_cast<size_t>(n * s.vocab));
    backend_.download(result.logits.data(), logits_.data(), result.logits.size() * sizeof(float));
  }
  mark(Phase::kLmHead);
  if (routing_on_device_) {
    // The loads of the step's MoE layers: one download of their counters, after the logits.
    std::vector<parallel::LayerLoad> loads = resident_.collect_loads();
    for (size_t l = 0; l < loads.size(); ++l) {
      if (!layers_[l].is_moe) continue;
      last_step_flops_ += expert_flops(config_, loads[l].traffic.pairs_received);
      result.loads[l] = std::move(loads[l]);
    }
  }
  ++num_steps_;
  if (step_observer_) step_observer_(num_steps_ - 1, result);
  return result;
}

PlacementChange Model::apply_placement(const parallel::Placement& next) {
  const ModelShapes& s = shapes_;
  const int rank = comm_.rank(), N = comm_.size();
  MOE_CHECK(next.num_layers() == s.num_layers && next.num_ranks() == N &&
                next.num_experts() == s.num_experts,
            "apply_placement: placement for {} layers, {} ranks, {} experts; model has {}, {}, {}",
            next.num_layers(), next.num_ranks(), next.num_experts(), s.num_layers, N,
            s.num_experts);
  // One expert's weights travel as gate [I, H], up [I, H], down [H, I], back to back.
  const int64_t piece = s.expert_inter * s.hidden;
  const int64_t per_expert = 3 * piece;
  PlacementChange change;
  for (int64_t l = 0; l < s.num_layers; ++l) {
    Layer& L = layers_[static_cast<size_t>(l)];
    if (!L.is_moe) continue;
    const parallel::LayerPlacement& from = placement_.layer(static_cast<int>(l));
    const parallel::LayerPlacement& to = next.layer(static_cast<int>(l));
    const auto held = [&](int r, int e) {
      const auto& list = from.rank_experts[static_cast<size_t>(r)];
      return std::find(list.begin(), list.end(), e) != list.end();
    };
    // The plan is a pure function of (from, to), so every rank derives the same one: a slot of
    // rank d for expert e that d does not hold is sent by the old replica (d mod replicas).
    const auto source = [&](int d, int e) {
      const auto& slots = from.expert_slots[static_cast<size_t>(e)];
      return slots[static_cast<size_t>(d) % slots.size()].rank;
    };
    std::vector<int64_t> send_counts(static_cast<size_t>(N), 0), recv_counts(send_counts);
    std::vector<const ExpertBuf*> to_send;  // in destination order, then the destination's slots
    int64_t moves = 0;
    for (int d = 0; d < N; ++d) {
      for (int e : to.rank_experts[static_cast<size_t>(d)]) {
        if (held(d, e)) continue;
        ++moves;
        const int src = source(d, e);
        if (src == rank) {
          send_counts[static_cast<size_t>(d)] += per_expert;
          const auto it = std::find_if(L.experts.begin(), L.experts.end(),
                                       [e](const ExpertBuf& b) { return b.logical == e; });
          to_send.push_back(&*it);
        }
        if (d == rank) recv_counts[static_cast<size_t>(src)] += per_expert;
      }
    }
    if (moves == 0 && from.rank_experts == to.rank_experts) continue;  // same on every rank

    const size_t send_size = to_send.size() * static_cast<size_t>(per_expert);
    size_t recv_size = 0;
    for (int64_t c : recv_counts) recv_size += static_cast<size_t>(c);
    kernels::Buffer<bf16> send(backend_, std::max<size_t>(send_size, 1));
    kernels::Buffer<bf16> recv(backend_, std::max<size_t>(recv_size, 1));
    for (size_t i = 0; i < to_send.size(); ++i) {
      bf16* dst = send.data() + i * static_cast<size_t>(per_expert);
      const size_t bytes = static_cast<size_t>(piece) * sizeof(bf16);
      backend_.copy(dst, to_send[i]->gate.data(), bytes);
      backend_.copy(dst + piece, to_send[i]->up.data(), bytes);
      backend_.copy(dst + 2 * piece, to_send[i]->down.data(), bytes);
    }
    if (comm_.device_buffers() || backend_.is_host_memory()) {
      comm_.all_to_all_v<bf16>({send.data(), send_size}, send_counts, {recv.data(), recv_size},
                               recv_counts);
    } else {  // a host communicator with a device backend: stage through host memory
      std::vector<bf16> host_send(send_size), host_recv(recv_size);
      if (send_size > 0) backend_.download(host_send.data(), send.data(), send_size * sizeof(bf16));
      comm_.all_to_all_v<bf16>(host_send, send_counts, host_recv, recv_counts);
      if (recv_size > 0) backend_.upload(recv.data(), host_recv.data(), recv_size * sizeof(bf16));
    }

    // New slots in `to`'s order: kept buffers move over; received ones are read from their
    // source's block of `recv`, in the order that source sent them (this rank's slot order).
    std::vector<int64_t> recv_offset(static_cast<size_t>(N), 0);
    for (int src = 1; src < N; ++src) {
      recv_offset[static_cast<size_t>(src)] =
          recv_offset[static_cast<size_t>(src - 1)] + recv_counts[static_cast<size_t>(src - 1)];
    }
    std::vector<ExpertBuf> experts;
    for (int e : to.rank_experts[static_cast<size_t>(rank)]) {
      const auto it = std::find_if(L.experts.begin(), L.experts.end(),
                                   [e](const ExpertBuf& b) { return b.logical == e; });
      if (it != L.experts.end()) {
        experts.push_back(std::move(*it));
        ++change.experts_kept;
        continue;
      }
      const int src = source(rank, e);
      const bf16* at = recv.data() + recv_offset[static_cast<size_t>(src)];
      recv_offset[static_cast<size_t>(src)] += per_expert;
      ExpertBuf b;
      b.logical = e;
      const size_t n = static_cast<size_t>(piece);
      b.gate = kernels::Buffer<bf16>(backend_, n);
      b.up = kernels::Buffer<bf16>(backend_, n);
      b.down = kernels::Buffer<bf16>(backend_, n);
      backend_.copy(b.gate.data(), at, n * sizeof(bf16));
      backend_.copy(b.up.data(), at + piece, n * sizeof(bf16));
      backend_.copy(b.down.data(), at + 2 * piece, n * sizeof(bf16));
      experts.push_back(std::move(b));
      ++change.experts_received;
      change.bytes_received += per_expert * static_cast<int64_t>(sizeof(bf16));
    }
    L.experts = std::move(experts);  // buffers of experts this rank no longer holds are freed
  }
  backend_.synchronize();
  placement_ = next;
  weights_ = rank_weights(config_, placement_, rank);
  refresh_slot_tables();
  return change;
}

}  // namespace moe::runtime
