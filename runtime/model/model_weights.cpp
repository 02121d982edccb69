// ModelWeights (model_weights.h): tensors by their HF names (docs/qwen3_moe.md), read once from
// the WeightSource into host memory and uploaded; expert moves through parallel/exchange.h, one
// expert as its gate, up and down bytes, then their scales.
#include "runtime/model/model_weights.h"

#include <algorithm>
#include <array>

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

const char* dtype_label(kernels::WeightDtype d) {
  return d == kernels::WeightDtype::kE4M3 ? "e4m3" : "bf16";
}

// The parts of one expert in the order they travel: gate, up, down.
std::array<const WeightBuffer*, 3> parts_of(const ExpertSlot& e) {
  return {&e.gate, &e.up, &e.down};
}
std::array<WeightBuffer*, 3> parts_of(ExpertSlot& e) {
  return {&e.gate, &e.up, &e.down};
}

}  // namespace

kernels::WeightView WeightBuffer::view() const {
  if (dtype == kernels::WeightDtype::kE4M3) return {data.data(), scales.data()};
  return kernels::WeightView(reinterpret_cast<const bf16*>(data.data()));
}

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
  measure_held_bytes();
}

kernels::Buffer<bf16> ModelWeights::load(WeightSource& w, const std::string& name,
                                         const std::vector<int64_t>& shape) {
  std::vector<bf16> host(static_cast<size_t>(numel(shape)));
  w.read(name, shape, host);
  return upload(host.data(), host.size());
}

WeightBuffer ModelWeights::load_matrix(WeightSource& w, const std::string& name, int64_t rows,
                                       int64_t cols, const kernels::WeightDtype* expected) {
  return load_stacked(w, {{name, rows}}, cols, expected);
}

WeightBuffer ModelWeights::load_stacked(WeightSource& w,
                                        const std::vector<std::pair<std::string, int64_t>>& parts,
                                        int64_t cols, const kernels::WeightDtype* expected) {
  WeightBuffer b;
  b.dtype = expected != nullptr ? *expected : w.dtype(parts.front().first);
  for (const auto& [name, part_rows] : parts) {
    const kernels::WeightDtype d = w.dtype(name);
    MOE_CHECK_AS("weights", d == b.dtype, "tensor '{}' is stored as {}, but {} expected ({})", name,
                 dtype_label(d), dtype_label(b.dtype),
                 expected != nullptr ? "the config's quantization_config sets its layer's experts"
                                     : "q, k and v of a layer are stacked as one type");
  }
  int64_t rows = 0, scale_count = 0;
  for (const auto& part : parts) {
    rows += part.second;
    scale_count += kernels::fp8_num_scales(part.second, cols);
  }
  if (b.dtype == kernels::WeightDtype::kBF16) {
    std::vector<bf16> host(static_cast<size_t>(rows * cols));
    int64_t at = 0;
    for (const auto& [name, part_rows] : parts) {
      const std::vector<int64_t> shape = {part_rows, cols};
      w.read(name, shape,
             std::span<bf16>(host).subspan(static_cast<size_t>(at * cols),
                                           static_cast<size_t>(part_rows * cols)));
      at += part_rows;
    }
    b.data = upload(reinterpret_cast<const uint8_t*>(host.data()), host.size() * sizeof(bf16));
    return b;
  }
  // e4m3: codes stacked by rows, each part's scale grid after the previous one's (split_qkv).
  std::vector<uint8_t> codes(static_cast<size_t>(rows * cols));
  std::vector<float> scales(static_cast<size_t>(scale_count));
  int64_t at = 0, scale_at = 0;
  for (const auto& [name, part_rows] : parts) {
    const std::vector<int64_t> shape = {part_rows, cols};
    const int64_t n = kernels::fp8_num_scales(part_rows, cols);
    w.read_e4m3(
        name, shape,
        std::span<uint8_t>(codes).subspan(static_cast<size_t>(at * cols),
                                          static_cast<size_t>(part_rows * cols)),
        std::span<float>(scales).subspan(static_cast<size_t>(scale_at), static_cast<size_t>(n)));
    at += part_rows;
    scale_at += n;
  }
  b.data = upload(codes.data(), codes.size());
  b.scales = upload(scales.data(), scales.size());
  return b;
}

template <class T>
kernels::Buffer<T> ModelWeights::upload(const T* host, size_t count) {
  kernels::Buffer<T> buf(backend_, count);
  backend_.upload(buf.data(), host, buf.size_bytes());
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
  L.o_proj = load_matrix(w, layer_name(l, "self_attn.o_proj.weight"), H, c.q_width());
  L.q_norm = load(w, layer_name(l, "self_attn.q_norm.weight"), {c.head_dim});
  L.k_norm = load(w, layer_name(l, "self_attn.k_norm.weight"), {c.head_dim});
  L.is_moe = c.layer_is_moe(l);
  if (!L.is_moe) {
    L.mlp_gate = load_matrix(w, layer_name(l, "mlp.gate_proj.weight"), D, H);
    L.mlp_up = load_matrix(w, layer_name(l, "mlp.up_proj.weight"), D, H);
    L.mlp_down = load_matrix(w, layer_name(l, "mlp.down_proj.weight"), H, D);
    return;
  }
  L.router = load_matrix(w, layer_name(l, "mlp.gate.weight"), c.num_experts, H);
  // Every rank knows the layer's expert types without reading an expert (moves need them).
  const char* kParts[3] = {"gate_proj.weight", "up_proj.weight", "down_proj.weight"};
  for (int p = 0; p < 3; ++p) {
    L.expert_dtypes[p] = c.quantization.quantizes(layer_name(l, "mlp.experts.0.") + kParts[p])
                             ? kernels::WeightDtype::kE4M3
                             : kernels::WeightDtype::kBF16;
  }
  for (int expert : placement.layer(static_cast<int>(l)).rank_experts[rank_]) {
    ExpertSlot e;
    e.logical = expert;
    const std::string p = fmt::format("mlp.experts.{}.", expert);
    e.gate = load_matrix(w, layer_name(l, p + kParts[0]), I, H, &L.expert_dtypes[0]);
    e.up = load_matrix(w, layer_name(l, p + kParts[1]), I, H, &L.expert_dtypes[1]);
    e.down = load_matrix(w, layer_name(l, p + kParts[2]), H, I, &L.expert_dtypes[2]);
    L.experts.push_back(std::move(e));
  }
}

void ModelWeights::measure_held_bytes() {
  int64_t dense =
      static_cast<int64_t>(embed_.size_bytes() + final_norm_.size_bytes() + lm_head_.size_bytes());
  int64_t experts = 0;
  for (const LayerWeights& L : layers_) {
    dense += static_cast<int64_t>(L.input_norm.size_bytes() + L.post_norm.size_bytes() +
                                  L.q_norm.size_bytes() + L.k_norm.size_bytes()) +
             L.qkv_proj.size_bytes() + L.o_proj.size_bytes() + L.router.size_bytes() +
             L.mlp_gate.size_bytes() + L.mlp_up.size_bytes() + L.mlp_down.size_bytes();
    for (const ExpertSlot& e : L.experts) {
      experts += e.gate.size_bytes() + e.up.size_bytes() + e.down.size_bytes();
    }
  }
  sizes_.dense_weight_bytes = dense;
  sizes_.expert_weight_bytes = experts;
}

void ModelWeights::refresh_slot_tables() {
  for (LayerWeights& L : layers_) {
    if (!L.is_moe) continue;
    L.slot_weights.clear();
    for (const ExpertSlot& e : L.experts) {
      L.slot_weights.push_back({e.gate.view(), e.up.view(), e.down.view()});
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
  measure_held_bytes();
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
  const ExpertMoves m = plan_moves(L, from, to, N);
  const std::vector<int64_t>& recv_counts = m.recv_counts;
  PlacementChange change;
  if (m.moves == 0 && from.rank_experts == to.rank_experts) return change;  // same on every rank

  // One expert travels as the bytes of gate [I, H], up [I, H] and down [H, I] as stored, then
  // the scales of its e4m3 parts, back to back.
  const int64_t H = config_.hidden_size, I = config_.moe_intermediate_size;
  const int64_t dims[3][2] = {{I, H}, {I, H}, {H, I}};
  int64_t data_bytes[3], scale_count[3], per_expert = 0;
  for (int p = 0; p < 3; ++p) {
    const bool e4m3 = L.expert_dtypes[p] == kernels::WeightDtype::kE4M3;
    data_bytes[p] = dims[p][0] * dims[p][1] * (e4m3 ? 1 : kWeightBytes);
    scale_count[p] = e4m3 ? kernels::fp8_num_scales(dims[p][0], dims[p][1]) : 0;
    per_expert += data_bytes[p] + scale_count[p] * 4;  // fp32 scales
  }
  const auto pack = [&](uint8_t* dst, const ExpertSlot& e) {
    const auto parts = parts_of(e);
    for (int p = 0; p < 3; ++p) {
      backend_.copy(dst, parts[p]->data.data(), static_cast<size_t>(data_bytes[p]));
      dst += data_bytes[p];
    }
    for (int p = 0; p < 3; ++p) {
      backend_.copy(dst, parts[p]->scales.data(), static_cast<size_t>(scale_count[p]) * 4);
      dst += scale_count[p] * 4;
    }
  };
  const auto unpack = [&](const uint8_t* src, ExpertSlot& e) {
    const auto parts = parts_of(e);
    for (int p = 0; p < 3; ++p) {
      parts[p]->dtype = L.expert_dtypes[p];
      parts[p]->data = kernels::Buffer<uint8_t>(backend_, static_cast<size_t>(data_bytes[p]));
      backend_.copy(parts[p]->data.data(), src, static_cast<size_t>(data_bytes[p]));
      src += data_bytes[p];
    }
    for (int p = 0; p < 3; ++p) {
      parts[p]->scales = kernels::Buffer<float>(backend_, static_cast<size_t>(scale_count[p]));
      backend_.copy(parts[p]->scales.data(), src, static_cast<size_t>(scale_count[p]) * 4);
      src += scale_count[p] * 4;
    }
  };

  size_t num_recv = 0;
  for (int64_t c : recv_counts) num_recv += static_cast<size_t>(c);
  const size_t stride = static_cast<size_t>(per_expert);
  kernels::Buffer<uint8_t> send(backend_, std::max<size_t>(m.to_send.size() * stride, 1));
  kernels::Buffer<uint8_t> recv(backend_, std::max<size_t>(num_recv * stride, 1));
  for (size_t i = 0; i < m.to_send.size(); ++i) pack(send.data() + i * stride, *m.to_send[i]);
  parallel::ExchangeScratch<uint8_t> scratch;
  parallel::exchange_rows<uint8_t>(comm, backend_, per_expert, send.data(), m.send_counts,
                                   recv.data(), recv_counts, scratch);

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
    const size_t src =
        static_cast<size_t>(recv_at[static_cast<size_t>(source_of(from, rank_, e))]++);
    ExpertSlot b;
    b.logical = e;
    unpack(recv.data() + src * stride, b);
    experts.push_back(std::move(b));
    ++change.experts_received;
    change.bytes_received += per_expert;
  }
  L.experts = std::move(experts);  // buffers of experts this rank no longer holds are freed
  return change;
}

}  // namespace moe::runtime
