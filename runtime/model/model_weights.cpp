// ModelWeights (model_weights.h): tensors by their HF names (docs/qwen3_moe.md), read once from
// the WeightSource into host memory and uploaded; expert moves through parallel/exchange.h.
#include "runtime/model/model_weights.h"

#include <algorithm>

#include "kernels/common/check.h"
#include "parallel/exchange.h"

namespace moe::runtime {
namespace {

std::string layer_name(int64_t l, const std::string& suffix) {
  return fmt::format("model.layers.{}.{}", l, suffix);
}

// The rank that sends expert e to a slot of rank d that does not hold it: the old replica
// (d mod replicas). A pure function of the old placement, so every rank derives the same plan.
int source_of(const parallel::LayerPlacement& from, int d, int e) {
  const auto& slots = from.expert_slots[static_cast<size_t>(e)];
  return slots[static_cast<size_t>(d) % slots.size()].rank;
}

std::vector<ExpertSlot>::iterator find_slot(LayerWeights& L, int e) {
  return std::find_if(L.experts.begin(), L.experts.end(),
                      [e](const ExpertSlot& b) { return b.logical == e; });
}
std::vector<ExpertSlot>::const_iterator find_slot(const LayerWeights& L, int e) {
  return std::find_if(L.experts.begin(), L.experts.end(),
                      [e](const ExpertSlot& b) { return b.logical == e; });
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

ModelWeights::ModelWeights(const ModelConfig& config, const parallel::Placement& placement,
                           int rank, kernels::Backend& backend, WeightSource& source,
                           const Progress& progress)
    : config_(config),
      backend_(backend),
      rank_(rank),
      tied_(config.tie_word_embeddings),
      sizes_(rank_weights(config, placement, rank)),
      progress_(progress) {
  MOE_CHECK(placement.num_layers() == config.num_hidden_layers,
            "placement has {} layers, model has {}", placement.num_layers(),
            config.num_hidden_layers);
  embed_ = load(source, "model.embed_tokens.weight", {config.vocab_size, config.hidden_size});
  layers_.resize(static_cast<size_t>(config.num_hidden_layers));
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) load_layer(source, placement, l);
  final_norm_ = load(source, "model.norm.weight", {config.hidden_size});
  if (!tied_) lm_head_ = load(source, "lm_head.weight", {config.vocab_size, config.hidden_size});
  refresh_slot_tables();
}

kernels::Buffer<bf16> ModelWeights::load(WeightSource& w, const std::string& name,
                                         const std::vector<int64_t>& shape) {
  std::vector<bf16> host(static_cast<size_t>(numel(shape)));
  w.read(name, shape, host);
  return upload(host);
}

kernels::Buffer<bf16> ModelWeights::load_stacked(
    WeightSource& w, const std::vector<std::pair<std::string, int64_t>>& parts, int64_t cols) {
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
  return upload(host);
}

kernels::Buffer<bf16> ModelWeights::upload(const std::vector<bf16>& host) {
  kernels::Buffer<bf16> buf(backend_, host.size());
  backend_.upload(buf.data(), host.data(), buf.size_bytes());
  done_bytes_ += static_cast<int64_t>(buf.size_bytes());
  if (progress_) progress_(done_bytes_, sizes_.total_bytes());
  return buf;
}

void ModelWeights::load_layer(WeightSource& w, const parallel::Placement& placement, int64_t l) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, I = c.moe_intermediate_size, D = c.intermediate_size;
  LayerWeights& L = layers_[static_cast<size_t>(l)];
  L.input_norm = load(w, layer_name(l, "input_layernorm.weight"), {H});
  L.post_norm = load(w, layer_name(l, "post_attention_layernorm.weight"), {H});
  L.qkv_proj = load_stacked(w,
                            {{layer_name(l, "self_attn.q_proj.weight"), c.q_width()},
                             {layer_name(l, "self_attn.k_proj.weight"), c.kv_width()},
                             {layer_name(l, "self_attn.v_proj.weight"), c.kv_width()}},
                            H);
  L.o_proj = load(w, layer_name(l, "self_attn.o_proj.weight"), {H, c.q_width()});
  L.q_norm = load(w, layer_name(l, "self_attn.q_norm.weight"), {c.head_dim});
  L.k_norm = load(w, layer_name(l, "self_attn.k_norm.weight"), {c.head_dim});
  L.is_moe = c.layer_is_moe(l);
  if (!L.is_moe) {
    L.mlp_gate = load(w, layer_name(l, "mlp.gate_proj.weight"), {D, H});
    L.mlp_up = load(w, layer_name(l, "mlp.up_proj.weight"), {D, H});
    L.mlp_down = load(w, layer_name(l, "mlp.down_proj.weight"), {H, D});
    return;
  }
  L.router = load(w, layer_name(l, "mlp.gate.weight"), {c.num_experts, H});
  for (int expert : placement.layer(static_cast<int>(l)).rank_experts[rank_]) {
    ExpertSlot e;
    e.logical = expert;
    const std::string p = fmt::format("mlp.experts.{}.", expert);
    e.gate = load(w, layer_name(l, p + "gate_proj.weight"), {I, H});
    e.up = load(w, layer_name(l, p + "up_proj.weight"), {I, H});
    e.down = load(w, layer_name(l, p + "down_proj.weight"), {H, I});
    L.experts.push_back(std::move(e));
  }
}

void ModelWeights::refresh_slot_tables() {
  for (LayerWeights& L : layers_) {
    if (!L.is_moe) continue;
    L.slot_weights.clear();
    for (const ExpertSlot& e : L.experts) {
      L.slot_weights.push_back({e.gate.data(), e.up.data(), e.down.data()});
    }
    L.slot_weights_dev.assign(backend_, L.slot_weights.data(), L.slot_weights.size());
  }
}

PlacementChange ModelWeights::apply_placement(const parallel::Placement& from,
                                              const parallel::Placement& next,
                                              parallel::Communicator& comm) {
  const int N = comm.size();
  MOE_CHECK(next.num_layers() == config_.num_hidden_layers && next.num_ranks() == N &&
                next.num_experts() == config_.num_experts,
            "apply_placement: placement for {} layers, {} ranks, {} experts; model has {}, {}, {}",
            next.num_layers(), next.num_ranks(), next.num_experts(), config_.num_hidden_layers, N,
            config_.num_experts);
  PlacementChange change;
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    LayerWeights& L = layers_[static_cast<size_t>(l)];
    if (!L.is_moe) continue;
    const PlacementChange c =
        move_experts(L, from.layer(static_cast<int>(l)), next.layer(static_cast<int>(l)), comm);
    change.experts_received += c.experts_received;
    change.bytes_received += c.bytes_received;
    change.experts_kept += c.experts_kept;
  }
  backend_.synchronize();
  sizes_ = rank_weights(config_, next, rank_);
  refresh_slot_tables();
  return change;
}

ModelWeights::ExpertMoves ModelWeights::plan_moves(const LayerWeights& L,
                                                   const parallel::LayerPlacement& from,
                                                   const parallel::LayerPlacement& to,
                                                   int num_ranks) const {
  const auto held = [&](int r, int e) {
    const auto& list = from.rank_experts[static_cast<size_t>(r)];
    return std::find(list.begin(), list.end(), e) != list.end();
  };
  ExpertMoves m;
  m.send_counts.assign(static_cast<size_t>(num_ranks), 0);
  m.recv_counts.assign(static_cast<size_t>(num_ranks), 0);
  for (int d = 0; d < num_ranks; ++d) {
    for (int e : to.rank_experts[static_cast<size_t>(d)]) {
      if (held(d, e)) continue;
      ++m.moves;
      const int src = source_of(from, d, e);
      if (src == rank_) {
        ++m.send_counts[static_cast<size_t>(d)];
        m.to_send.push_back(&*find_slot(L, e));
      }
      if (d == rank_) ++m.recv_counts[static_cast<size_t>(src)];
    }
  }
  return m;
}

PlacementChange ModelWeights::move_experts(LayerWeights& L, const parallel::LayerPlacement& from,
                                           const parallel::LayerPlacement& to,
                                           parallel::Communicator& comm) {
  const int N = comm.size();
  // One expert's weights travel as gate [I, H], up [I, H], down [H, I], back to back.
  const int64_t piece = config_.moe_intermediate_size * config_.hidden_size;
  const int64_t per_expert = 3 * piece;
  const ExpertMoves m = plan_moves(L, from, to, N);
  const std::vector<int64_t>& send_counts = m.send_counts;
  const std::vector<int64_t>& recv_counts = m.recv_counts;
  const std::vector<const ExpertSlot*>& to_send = m.to_send;
  PlacementChange change;
  if (m.moves == 0 && from.rank_experts == to.rank_experts) return change;  // same on every rank

  size_t num_recv = 0;
  for (int64_t c : recv_counts) num_recv += static_cast<size_t>(c);
  kernels::Buffer<bf16> send(backend_, std::max<size_t>(to_send.size() * per_expert, 1));
  kernels::Buffer<bf16> recv(backend_, std::max<size_t>(num_recv * per_expert, 1));
  const size_t piece_bytes = static_cast<size_t>(piece) * sizeof(bf16);
  for (size_t i = 0; i < to_send.size(); ++i) {
    bf16* dst = send.data() + i * static_cast<size_t>(per_expert);
    backend_.copy(dst, to_send[i]->gate.data(), piece_bytes);
    backend_.copy(dst + piece, to_send[i]->up.data(), piece_bytes);
    backend_.copy(dst + 2 * piece, to_send[i]->down.data(), piece_bytes);
  }
  parallel::ExchangeScratch<bf16> scratch;
  parallel::exchange_rows<bf16>(comm, backend_, per_expert, send.data(), send_counts, recv.data(),
                                recv_counts, scratch);

  // New slots in `to`'s order: kept buffers move over; received ones are read from their
  // source's block of `recv`, in the order that source sent them (this rank's slot order).
  std::vector<int64_t> recv_at(static_cast<size_t>(N), 0);  // in experts
  for (int src = 1; src < N; ++src) recv_at[src] = recv_at[src - 1] + recv_counts[src - 1];
  std::vector<ExpertSlot> experts;
  for (int e : to.rank_experts[static_cast<size_t>(rank_)]) {
    const auto it = find_slot(L, e);
    if (it != L.experts.end()) {
      experts.push_back(std::move(*it));
      ++change.experts_kept;
      continue;
    }
    const bf16* at =
        recv.data() + recv_at[static_cast<size_t>(source_of(from, rank_, e))]++ * per_expert;
    ExpertSlot b;
    b.logical = e;
    b.gate = kernels::Buffer<bf16>(backend_, static_cast<size_t>(piece));
    b.up = kernels::Buffer<bf16>(backend_, static_cast<size_t>(piece));
    b.down = kernels::Buffer<bf16>(backend_, static_cast<size_t>(piece));
    backend_.copy(b.gate.data(), at, piece_bytes);
    backend_.copy(b.up.data(), at + piece, piece_bytes);
    backend_.copy(b.down.data(), at + 2 * piece, piece_bytes);
    experts.push_back(std::move(b));
    ++change.experts_received;
    change.bytes_received += per_expert * static_cast<int64_t>(sizeof(bf16));
  }
  L.experts = std::move(experts);  // buffers of experts this rank no longer holds are freed
  return change;
}

}  // namespace moe::runtime
