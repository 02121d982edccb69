// `moe-ep plan` numbers: exact parameter counts per role, active parameters and FLOPs per
// token, and a per-rank memory estimate. Pure arithmetic on ModelConfig; every buffer estimate
// is written out next to its formula below so the printed numbers can be checked by hand.
#include "runtime/analysis/plan.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/check.h"
#include "kernels/common/moe_wire.h"
#include "parallel/dispatcher.h"

namespace moe::runtime {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kFp32Bytes = 4;
constexpr int64_t kRouteEntryBytes = 8;  // parallel::RouteEntry: int32 slot + float weight
const std::vector<int64_t> kTopKs = {1, 2, 4, 8, 16};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// How the weights are stored, for the headings.
std::string weights_label(const ModelConfig& c) {
  return c.quantization.fp8 ? "fp8: e4m3 + one fp32 scale per 128 x 128 block where the "
                              "quantization_config says (linear layers), else bf16"
                            : "bf16, 2 bytes each";
}

std::string gib(int64_t bytes) {
  return fmt::format("{:.2f}", static_cast<double>(bytes) / kGiB);
}

// Bytes of one expert (gate, up, down as stored), the same in every MoE layer of a config.
int64_t expert_bytes(const ParamBreakdown& p, const WeightBytes& b) {
  return p.num_moe_layers > 0 && p.per_expert > 0 ? b.experts / (p.experts / p.per_expert) : 0;
}

RankMemory rank_memory(const ModelConfig& c, const ParamBreakdown& p, const WeightBytes& b,
                       const PlanOptions& o, int num_ranks, int64_t override_slots) {
  RankMemory m;
  m.num_ranks = num_ranks;
  const int64_t n = num_ranks;
  const int64_t e = c.num_experts;
  const int64_t k = c.num_experts_per_tok;
  const int64_t h = c.hidden_size;
  const int64_t act = kFp32Bytes;  // activations and exchanged rows

  // Contiguous placement gives the first ranks ceil(E/N) experts per layer.
  if (override_slots >= 0) {
    m.expert_slots = override_slots;
    m.expert_slots_per_layer =
        p.num_moe_layers > 0 ? ceil_div(override_slots, p.num_moe_layers) : 0;
  } else {
    m.expert_slots_per_layer = p.num_moe_layers > 0 ? ceil_div(e, n) : 0;
    m.expert_slots = m.expert_slots_per_layer * p.num_moe_layers;
  }
  m.sequences = ceil_div(o.batch, n);
  m.tokens = m.sequences * o.context;

  m.dense_replica_bytes = b.dense_replica();
  m.expert_shard_bytes = m.expert_slots * expert_bytes(p, b);
  // K and V for every layer, every position of this rank's sequences.
  m.kv_cache_bytes = 2 * c.num_hidden_layers * c.kv_width() * m.sequences * o.context * o.kv_bytes;

  // Worst case of one expert-parallel exchange (parallel/dispatcher.h layouts): this rank sends
  // each own token once per destination rank holding one of its experts (<= min(k, N) rows),
  // and in the worst case receives one row from every token of the job (all route here).
  const bool has_moe = p.num_moe_layers > 0;
  const int64_t send_rows = has_moe ? m.tokens * std::min(k, n) : 0;
  const int64_t recv_rows = has_moe ? o.batch * o.context : 0;
  const int64_t pairs = recv_rows * std::min(k, std::max<int64_t>(m.expert_slots_per_layer, 0));
  // One exchange level over `peers` ranks whose slots carry `header_slots` per-slot counts:
  // dispatch send + recv, combine's partial (recv side) + returned (send side), each [rows, H];
  // the route entries travelling with the dispatched rows; and with several peers the messages:
  // every peer's fixed-capacity slot on both sides (the larger, host capacity), the route entries
  // a second time (in the messages and in their own buffers), the spill's padding row per peer
  // and the headers.
  const auto level_bytes = [&](int64_t peers, int64_t sent, int64_t received,
                               int64_t header_slots) {
    int64_t bytes = 2 * (sent + received) * h * act + (sent + received) * k * kRouteEntryBytes;
    if (!has_moe || peers <= 1) return bytes;
    const kernels::wire::MessageFormat f = kernels::wire::message_format(
        kernels::WireDtype::kF32, h, static_cast<int32_t>(k),
        kernels::layout::kHeaderSlots + static_cast<int32_t>(header_slots),
        parallel::Dispatcher::kHostCapacityRows);
    return bytes + 2 * peers * f.slot_bytes + (sent + received) * k * kRouteEntryBytes +
           peers * f.row_bytes + 2 * f.header_bytes;
  };
  const int64_t g = o.ranks_per_node;
  if (has_moe && g > 0 && n > g) {
    // Node-first: the first level sends one row per destination node to its proxy (slots named
    // by expert id), which keeps the rows it received and their sums ([R, H] each) and runs the
    // node's flat exchange on them.
    const int64_t first_sent = m.tokens * std::min(k, n / g);
    m.communication_bytes =
        level_bytes(n, first_sent, recv_rows, e) + 2 * recv_rows * h * act +
        level_bytes(g, recv_rows * std::min(k, g), recv_rows, m.expert_slots_per_layer);
  } else {
    m.communication_bytes = level_bytes(n, send_rows, recv_rows, m.expert_slots_per_layer);
  }

  // Activation buffers of one prefill step of all this rank's tokens; buffers are reused from
  // layer to layer, so one set is counted:
  //   hidden stream      3 [T, H]                      residual, normed input, block output
  //   attention          [T, q] x 2 + [T, kv] x 2      q, attention output, k, v (new rows)
  //   scores             not counted: attention is computed in tiles (flash-style), never [T, L]
  //   router (fp32)      [T, E] logits + [T, k] ids and weights
  //   experts            [P, H] gathered in + [P, 2 I] gate|up + [P, I] act + [P, H] out,
  //                      P = pairs received (worst case above)
  //   dense MLP          [T, 3 intermediate] when the model has dense layers
  //   logits (fp32)      [sequences, vocab] (last position only)
  const int64_t t = m.tokens;
  int64_t elems = 3 * t * h + 2 * t * c.q_width() + 2 * t * c.kv_width();
  if (has_moe) elems += pairs * (2 * h + 3 * c.moe_intermediate_size);
  if (p.num_dense_layers > 0) elems += 3 * t * c.intermediate_size;
  int64_t fp32_elems = m.sequences * c.vocab_size;
  if (has_moe) fp32_elems += t * e + 2 * t * k;
  m.activation_buffer_bytes = elems * act + fp32_elems * kFp32Bytes;

  m.total_bytes = m.dense_replica_bytes + m.expert_shard_bytes + m.kv_cache_bytes +
                  m.activation_buffer_bytes + m.communication_bytes;
  m.fits = static_cast<double>(m.total_bytes) <= o.gpu_mem_gib * kGiB;
  return m;
}

// Fixed-width text table: first column left-aligned, the rest right-aligned.
std::string table(const std::vector<std::string>& header,
                  const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s = " ";
    for (size_t i = 0; i < cells.size(); ++i) {
      s += i == 0 ? fmt::format(" {:<{}}", cells[i], width[i])
                  : fmt::format("  {:>{}}", cells[i], width[i]);
    }
    return s + "\n";
  };
  std::string out = line(header);
  for (const auto& r : rows) out += line(r);
  return out;
}

}  // namespace

std::string with_thousands(int64_t value) {
  std::string digits =
      std::to_string(value < 0 ? -static_cast<uint64_t>(value) : static_cast<uint64_t>(value));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return value < 0 ? "-" + out : out;
}

PlanReport make_plan(const ModelConfig& config, const PlanOptions& options) {
  config.validate();
  MOE_CHECK_AS("config", options.batch >= 1, "plan: --batch must be >= 1, got {}", options.batch);
  MOE_CHECK_AS("config", options.context >= 1, "plan: --context must be >= 1, got {}",
               options.context);
  // Keeps every buffer count below exact-int64 territory even at worst-case routing.
  MOE_CHECK_AS("config",
               static_cast<double>(options.batch) * static_cast<double>(options.context) <= 1e12,
               "plan: --batch {} x --context {} is beyond what this estimate handles (1e12 tokens)",
               options.batch, options.context);
  MOE_CHECK_AS("config", options.gpu_mem_gib > 0 && std::isfinite(options.gpu_mem_gib),
               "plan: --gpu-mem-gib must be > 0, got {}", options.gpu_mem_gib);
  MOE_CHECK_AS("config", options.kv_bytes == 2 || options.kv_bytes == 4,
               "plan: KV-cache element bytes must be 2 (bf16) or 4 (fp32), got {}",
               options.kv_bytes);
  MOE_CHECK_AS("config", !options.ranks.empty() || !options.expert_slots_per_rank.empty(),
               "plan: no rank counts given");
  for (int n : options.ranks)
    MOE_CHECK_AS("config", n >= 1, "plan: --ranks must be >= 1, got {}", n);
  for (int64_t s : options.expert_slots_per_rank) {
    MOE_CHECK_AS("config", s >= 0, "plan: placement gives a rank {} expert slots", s);
  }

  PlanReport r;
  r.model_name = config.name;
  r.source = config.source;
  r.config = config;
  r.options = options;
  r.params = count_params(config);
  r.total_params = r.params.total;
  r.weight_bytes = weight_bytes(config);
  r.total_bytes = r.weight_bytes.total();
  r.configured_top_k = config.num_experts > 0 ? config.num_experts_per_tok : 0;
  r.active_params = count_active_params(config, r.configured_top_k);
  r.active_share = static_cast<double>(r.active_params) / static_cast<double>(r.total_params);
  r.active_bytes = active_weight_bytes(config, r.weight_bytes, r.configured_top_k);
  r.matmul_params_per_token = matmul_params_per_token(config, r.configured_top_k);
  const TokenFlops flops = flops_per_token(config, r.configured_top_k, options.context);
  r.matmul_flops_per_token = flops.matmul;
  r.attention_flops_per_token = flops.attention;
  r.flops_per_token = flops.total();

  std::vector<int64_t> ks;
  if (config.num_experts > 0) {
    for (int64_t k : kTopKs) {
      if (k <= config.num_experts) ks.push_back(k);
    }
  }
  if (std::find(ks.begin(), ks.end(), r.configured_top_k) == ks.end())
    ks.push_back(r.configured_top_k);
  std::sort(ks.begin(), ks.end());
  for (int64_t k : ks) {
    ActiveRow row;
    row.top_k = k;
    row.active_params = count_active_params(config, k);
    row.share = static_cast<double>(row.active_params) / static_cast<double>(r.total_params);
    row.active_bytes = active_weight_bytes(config, r.weight_bytes, k);
    row.matmul_params = matmul_params_per_token(config, k);
    row.flops_per_token = flops_per_token(config, k, options.context).total();
    row.configured = k == r.configured_top_k;
    r.active.push_back(row);
  }

  if (!options.expert_slots_per_rank.empty()) {
    int64_t largest = *std::max_element(options.expert_slots_per_rank.begin(),
                                        options.expert_slots_per_rank.end());
    r.ranks.push_back(rank_memory(config, r.params, r.weight_bytes, options,
                                  static_cast<int>(options.expert_slots_per_rank.size()), largest));
  } else {
    for (int n : options.ranks)
      r.ranks.push_back(rank_memory(config, r.params, r.weight_bytes, options, n, -1));
  }
  return r;
}

std::string format_plan(const PlanReport& r) {
  const ModelConfig& c = r.config;
  const ParamBreakdown& p = r.params;
  std::string out;
  out += fmt::format("moe-ep plan: {} ({})\n", r.model_name,
                     r.source.empty() ? "<built-in>" : r.source);
  out += fmt::format(
      "  {} layers ({} MoE, {} dense) · hidden {} · {} heads / {} kv heads x head_dim {} · "
      "{} experts, top-{} · expert width {} · vocab {}\n\n",
      c.num_hidden_layers, p.num_moe_layers, p.num_dense_layers, c.hidden_size,
      c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_experts, r.configured_top_k,
      c.moe_intermediate_size, with_thousands(c.vocab_size));

  auto prow = [](const std::string& what, int64_t n, int64_t bytes) {
    return std::vector<std::string>{what, with_thousands(n), with_thousands(bytes)};
  };
  const WeightBytes& b = r.weight_bytes;
  std::vector<std::vector<std::string>> rows = {
      prow("embedding", p.embedding, b.embedding),
      prow(c.tie_word_embeddings ? "lm_head (tied: shares embedding)" : "lm_head", p.lm_head,
           b.lm_head),
      prow("attention (q,k,v,o, q/k norms)", p.attention, b.attention),
      prow("layer norms", p.layer_norms + p.final_norm, b.layer_norms + b.final_norm),
      prow("router", p.router, b.router),
      prow(fmt::format("experts ({} x {} layers)", c.num_experts, p.num_moe_layers), p.experts,
           b.experts),
      prow(fmt::format("dense MLP ({} layers)", p.num_dense_layers), p.dense_mlp, b.dense_mlp),
      prow("total", r.total_params, r.total_bytes)};
  out += fmt::format("Parameters (weights {})\n", weights_label(c));
  out += table({"part", "parameters", "bytes"}, rows);
  out +=
      fmt::format("  total: {} parameters, {} bytes ({} GiB)\n\n", with_thousands(r.total_params),
                  with_thousands(r.total_bytes), gib(r.total_bytes));

  out += fmt::format(
      "Active per token (embedding and lm_head included) and FLOPs per token at context {}\n",
      with_thousands(r.options.context));
  rows.clear();
  for (const auto& a : r.active) {
    rows.push_back({fmt::format("{}{}", a.top_k, a.configured ? " (configured)" : ""),
                    with_thousands(a.active_params), fmt::format("{:.2f}%", 100.0 * a.share),
                    with_thousands(a.active_bytes),
                    fmt::format("{:.2f}", a.flops_per_token / 1e9)});
  }
  out += table({"top-k", "active params", "share", "active bytes", "GFLOP/token"}, rows);
  out += fmt::format(
      "  at top-{}: {} active of {} ({:.2f}%)\n"
      "  FLOPs/token = 2 x {} matmul params + attention 4 x {} layers x {} heads x {} head_dim x "
      "{} context = {:.3f} + {:.3f} = {:.3f} GFLOP\n\n",
      r.configured_top_k, with_thousands(r.active_params), with_thousands(r.total_params),
      100.0 * r.active_share, with_thousands(r.matmul_params_per_token), c.num_hidden_layers,
      c.num_attention_heads, c.head_dim, with_thousands(r.options.context),
      r.matmul_flops_per_token / 1e9, r.attention_flops_per_token / 1e9, r.flops_per_token / 1e9);

  const bool overridden = !r.options.expert_slots_per_rank.empty();
  out += fmt::format(
      "Per-rank memory, GiB (largest rank; weights {}; batch {} x context {}; KV cache {}; "
      "activations fp32; placement {}; GPU {} GiB)\n",
      c.quantization.fp8 ? "fp8" : "bf16", r.options.batch, with_thousands(r.options.context),
      r.options.kv_bytes == 2 ? "bf16 (cuda)" : "fp32 (cpu)",
      overridden ? (r.options.placement_name.empty() ? "given" : r.options.placement_name)
                 : "contiguous",
      r.options.gpu_mem_gib);
  rows.clear();
  for (const auto& m : r.ranks) {
    rows.push_back({std::to_string(m.num_ranks), std::to_string(m.expert_slots_per_layer),
                    gib(m.dense_replica_bytes), gib(m.expert_shard_bytes), gib(m.kv_cache_bytes),
                    gib(m.activation_buffer_bytes), gib(m.communication_bytes), gib(m.total_bytes),
                    m.fits ? "yes" : "NO"});
  }
  out += table({"ranks", "experts/layer", "dense replica", "expert shard", "KV cache",
                "activations", "comm buffers", "total", "fits"},
               rows);
  out +=
      "  KV cache = 2 x layers x kv_width x ceil(batch/N) x context x bytes; activations = one "
      "prefill step of the rank's tokens\n"
      "  (attention scores tiled, not stored); comm = dispatch + combine buffers when every token "
      "routes to this rank (worst case).\n";
  return out;
}

nlohmann::json plan_to_json(const PlanReport& r) {
  using nlohmann::json;
  const ModelConfig& c = r.config;
  const ParamBreakdown& p = r.params;
  json j;
  j["model"] = {{"name", r.model_name},
                {"source", r.source},
                {"vocab_size", c.vocab_size},
                {"hidden_size", c.hidden_size},
                {"num_hidden_layers", c.num_hidden_layers},
                {"num_attention_heads", c.num_attention_heads},
                {"num_key_value_heads", c.num_key_value_heads},
                {"head_dim", c.head_dim},
                {"intermediate_size", c.intermediate_size},
                {"moe_intermediate_size", c.moe_intermediate_size},
                {"num_experts", c.num_experts},
                {"num_experts_per_tok", c.num_experts_per_tok},
                {"tie_word_embeddings", c.tie_word_embeddings},
                {"num_moe_layers", p.num_moe_layers},
                {"num_dense_layers", p.num_dense_layers}};
  j["options"] = {
      {"batch", r.options.batch},
      {"context", r.options.context},
      {"gpu_mem_gib", r.options.gpu_mem_gib},
      {"kv_bytes", r.options.kv_bytes},
      {"weights_dtype", c.quantization.fp8 ? "fp8" : "bf16"},
      {"placement",
       r.options.expert_slots_per_rank.empty()
           ? std::string("contiguous")
           : (r.options.placement_name.empty() ? std::string("given") : r.options.placement_name)}};
  j["params"] = {{"embedding", p.embedding},     {"lm_head", p.lm_head},
                 {"final_norm", p.final_norm},   {"attention", p.attention},
                 {"layer_norms", p.layer_norms}, {"router", p.router},
                 {"experts", p.experts},         {"dense_mlp", p.dense_mlp},
                 {"per_expert", p.per_expert},   {"total", p.total}};
  j["total_params"] = r.total_params;
  j["total_bytes"] = r.total_bytes;
  j["configured_top_k"] = r.configured_top_k;
  j["active_params"] = r.active_params;
  j["active_share"] = r.active_share;
  j["active_bytes"] = r.active_bytes;
  j["matmul_params_per_token"] = r.matmul_params_per_token;
  j["flops_per_token"] = {{"matmul", r.matmul_flops_per_token},
                          {"attention", r.attention_flops_per_token},
                          {"total", r.flops_per_token},
                          {"context", r.options.context}};
  j["active"] = json::array();
  for (const auto& a : r.active) {
    j["active"].push_back({{"top_k", a.top_k},
                           {"active_params", a.active_params},
                           {"share", a.share},
                           {"active_bytes", a.active_bytes},
                           {"matmul_params", a.matmul_params},
                           {"flops_per_token", a.flops_per_token},
                           {"configured", a.configured}});
  }
  j["ranks"] = json::array();
  for (const auto& m : r.ranks) {
    j["ranks"].push_back({{"num_ranks", m.num_ranks},
                          {"expert_slots", m.expert_slots},
                          {"expert_slots_per_layer", m.expert_slots_per_layer},
                          {"sequences", m.sequences},
                          {"tokens", m.tokens},
                          {"dense_replica_bytes", m.dense_replica_bytes},
                          {"expert_shard_bytes", m.expert_shard_bytes},
                          {"kv_cache_bytes", m.kv_cache_bytes},
                          {"activation_buffer_bytes", m.activation_buffer_bytes},
                          {"communication_bytes", m.communication_bytes},
                          {"total_bytes", m.total_bytes},
                          {"fits", m.fits}});
  }
  return j;
}

}  // namespace moe::runtime
