// HF checkpoint directory as a WeightSource: finds each tensor through the index (or the shards'
// headers), maps a shard only when one of its tensors is first read, and copies only that
// tensor's bytes (one expert's slice of a fused tensor), converting F16/F32 to bf16 (RNE).
//
// FP8 checkpoints (docs/fp8.md): an F8_E4M3 tensor W comes with its scale tensor
// (`W_without_.weight.weight_scale_inv`, or `W_scale_inv` / `W_scales_inv` for a fused expert
// tensor without `.weight`), F32 or BF16 [ceil(rows / 128), ceil(cols / 128)] per matrix
// ([E, .., ..] for fused), and the dequantised weight is code value x scale. An F8 tensor is read
// only when config.json's quantization_config makes it FP8 (WeightQuantization::quantizes).
//
// Expert layouts. The model asks for per-expert names `P.E.{gate,up,down}_proj.weight` with
// P = model.layers.L.mlp.experts, gate/up [I, H], down [H, I]. When a checkpoint fuses experts,
// they are found as `P.gate_up_proj` / `P.down_proj` (with or without `.weight`) in one of two
// layouts, told apart by shape:
//   standard    gate_up [E, 2I, H] (gate rows 0..I-1, then up rows I..2I-1), down [E, H, I]
//   transposed  gate_up [E, H, 2I] (gate columns 0..I-1, then up columns),   down [E, I, H]
// A tensor alone is ambiguous when its two interpretations have the same shape (gate_up when
// H == 2I, down when H == I). Then the layer's other fused tensor decides: both cannot be
// ambiguous at once (that needs I == 0). When the other one is absent or also ambiguous, the
// standard layout (transformers' Qwen3-MoE) is assumed.
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <unordered_map>

#include "kernels/common/check.h"
#include "kernels/common/fp8.h"
#include "runtime/io/matrix_slice.h"
#include "runtime/io/safetensors.h"
#include "runtime/io/weights.h"

namespace moe::runtime {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

std::string shape_str(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

enum class ExpertPart { kGate, kUp, kDown };
const char* part_name(ExpertPart p) {
  return p == ExpertPart::kGate ? "gate" : p == ExpertPart::kUp ? "up" : "down";
}

// `P.E.{gate,up,down}_proj.weight` with P ending in "experts".
struct ExpertName {
  std::string prefix;
  int64_t expert = 0;
  ExpertPart part = ExpertPart::kGate;
};

std::optional<ExpertName> parse_expert_name(std::string_view name) {
  static constexpr std::pair<std::string_view, ExpertPart> kSuffixes[] = {
      {".gate_proj.weight", ExpertPart::kGate},
      {".up_proj.weight", ExpertPart::kUp},
      {".down_proj.weight", ExpertPart::kDown}};
  for (const auto& [suffix, part] : kSuffixes) {
    if (!ends_with(name, suffix)) continue;
    const std::string_view rest = name.substr(0, name.size() - suffix.size());
    const size_t dot = rest.rfind('.');
    if (dot == std::string_view::npos) return std::nullopt;
    const std::string_view digits = rest.substr(dot + 1);
    const std::string_view prefix = rest.substr(0, dot);
    if (digits.empty() || digits.size() > 9 || !ends_with(prefix, "experts")) return std::nullopt;
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::nullopt;
    }
    return ExpertName{std::string(prefix), std::stoll(std::string(digits)), part};
  }
  return std::nullopt;
}

enum class FusedLayout { kStandard, kTransposed };

// Converts one element of a checkpoint dtype to bf16 (round to nearest even).
template <SafetensorsDtype D>
bf16 load_bf16(const std::byte* p) {
  if constexpr (D == SafetensorsDtype::kBF16) {
    bf16 v;
    std::memcpy(&v.bits, p, 2);
    return v;
  } else if constexpr (D == SafetensorsDtype::kF16) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return float_to_bf16(half_to_float(h));  // half -> float is exact: one rounding
  } else {
    float f;
    std::memcpy(&f, p, 4);
    return float_to_bf16(f);
  }
}

// dst[r * cols + c] = src element (r * row_stride + c * col_stride), strides in elements.
// Transposing reads go in 32x32 tiles so both sides stay in cache.
template <SafetensorsDtype D>
void copy_2d(const std::byte* src, int64_t elem_bytes, int64_t rows, int64_t cols,
             int64_t row_stride, int64_t col_stride, bf16* dst) {
  if (rows == 0 || cols == 0) return;  // dst may be null for an empty span
  if (col_stride == 1 && row_stride == cols) {
    if constexpr (D == SafetensorsDtype::kBF16) {
      std::memcpy(dst, src, static_cast<size_t>(rows * cols) * sizeof(bf16));
    } else {
      for (int64_t i = 0; i < rows * cols; ++i) dst[i] = load_bf16<D>(src + i * elem_bytes);
    }
    return;
  }
  constexpr int64_t kTile = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = r0; r < r1; ++r) {
          dst[r * cols + c] = load_bf16<D>(src + (r * row_stride + c * col_stride) * elem_bytes);
        }
      }
    }
  }
}

class SafetensorsCheckpoint final : public WeightSource {
 public:
  SafetensorsCheckpoint(const std::string& dir, const ModelConfig& config)
      : dir_(dir), config_(config) {
    const char* trace = std::getenv("MOE_EP_TRACE_READS");
    trace_ = trace != nullptr && *trace != '\0' && std::strcmp(trace, "0") != 0;
    std::error_code ec;
    if (!fs::is_directory(dir_, ec)) {
      MOE_THROW("checkpoint", "{}: checkpoint directory does not exist or is not a directory",
                dir_);
    }
    const fs::path root(dir_);
    if (fs::exists(root / kIndexFile, ec)) {
      has_index_ = true;
      load_index((root / kIndexFile).string());
      return;
    }
    std::vector<std::string> files;
    if (fs::is_regular_file(root / kSingleFile, ec)) {
      files.push_back(kSingleFile);
    } else {
      for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
        const std::string file = e.path().filename().string();
        if (e.is_regular_file(ec) && ends_with(file, ".safetensors")) files.push_back(file);
      }
      std::sort(files.begin(), files.end());
    }
    if (files.empty()) {
      MOE_THROW("checkpoint", "{}: no {}, {} or *.safetensors files in the checkpoint directory",
                dir_, kIndexFile, kSingleFile);
    }
    // Without an index the only map from tensor to file is each shard's header: read the
    // headers (8 + N bytes each) now; tensor data is still mapped lazily and files_opened counts
    // only files mapped for reading.
    for (const std::string& file : files) {
      const int shard = add_shard(file);
      const SafetensorsHeader header = read_safetensors_header(shards_[shard].path);
      for (const SafetensorsTensor& t : header.tensors) {
        const auto [it, inserted] = tensor_shard_.emplace(t.name, shard);
        if (!inserted) {
          MOE_THROW("checkpoint", "{}: tensor is in both '{}' and '{}', tensor '{}'", dir_,
                    shards_[it->second].file, file, t.name);
        }
      }
    }
  }

  void read(const std::string& name, std::span<const int64_t> shape, std::span<bf16> dst) override {
    const auto t0 = std::chrono::steady_clock::now();
    int64_t numel = 1;
    for (int64_t d : shape) {
      MOE_CHECK_AS("checkpoint", d >= 0 && !__builtin_mul_overflow(numel, d, &numel),
                   "{}: requested shape {} is invalid, tensor '{}'", dir_, shape_str(shape), name);
    }
    MOE_CHECK_AS("checkpoint", static_cast<int64_t>(dst.size()) == numel,
                 "{}: destination holds {} elements but shape {} has {}, tensor '{}'", dir_,
                 dst.size(), shape_str(shape), numel, name);
    const Stored st = stored(name);
    const MatrixSlice m = slice_of(name, st, shape);
    const std::string what = slice_label(st);
    if (m.transposed) {
      // dst(r, c) = src(c, c0 + r).
      copy_converted(st.at, m.base + m.c0, m.rows, m.cols, 1, m.src_cols, dst.data(), what);
    } else {
      copy_converted(st.at, m.base + m.r0 * m.src_cols, 1, m.rows * m.cols, m.rows * m.cols, 1,
                     dst.data(), what);
    }
    ++stats_.tensors_read;
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  kernels::WeightDtype dtype(const std::string& name) override {
    const Stored st = stored(name);
    const SafetensorsDtype d = st.at.tensor->dtype;
    if (d == SafetensorsDtype::kF8E5M2) {
      MOE_THROW("checkpoint",
                "{}: dtype F8_E5M2 is not read (FP8 checkpoints are e4m3: quantization_config.fmt "
                "e4m3), tensor '{}'",
                st.at.shard->path, st.at.tensor->name);
    }
    if (d != SafetensorsDtype::kF8E4M3) return kernels::WeightDtype::kBF16;
    if (!config_.quantization.fp8) {
      MOE_THROW("checkpoint",
                "{}: dtype F8_E4M3, but config.json announces no FP8 weights (no "
                "quantization_config with quant_method fp8), tensor '{}'",
                st.at.shard->path, st.at.tensor->name);
    }
    if (!config_.quantization.quantizes(st.at.tensor->name)) {
      MOE_THROW("checkpoint",
                "{}: dtype F8_E4M3, but config.json's quantization_config does not make it FP8 "
                "(modules_to_not_convert names it, or it is not a linear layer's weight), tensor "
                "'{}'",
                st.at.shard->path, st.at.tensor->name);
    }
    scale_name_of(st.at);  // a missing scale tensor is reported now
    return kernels::WeightDtype::kE4M3;
  }

  void read_e4m3(const std::string& name, std::span<const int64_t> shape, std::span<uint8_t> codes,
                 std::span<float> scales) override {
    const auto t0 = std::chrono::steady_clock::now();
    MOE_CHECK_AS("checkpoint", shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0,
                 "{}: e4m3 tensor requested with shape {}, expected 2-D, tensor '{}'", dir_,
                 shape_str(shape), name);
    MOE_CHECK_AS(
        "checkpoint",
        static_cast<int64_t>(codes.size()) == shape[0] * shape[1] &&
            static_cast<int64_t>(scales.size()) == kernels::fp8_num_scales(shape[0], shape[1]),
        "{}: destination holds {} codes and {} scales, shape {} needs {} and {}, tensor "
        "'{}'",
        dir_, codes.size(), scales.size(), shape_str(shape), shape[0] * shape[1],
        kernels::fp8_num_scales(shape[0], shape[1]), name);
    MOE_CHECK_AS("checkpoint", dtype(name) == kernels::WeightDtype::kE4M3,
                 "{}: tensor is not F8_E4M3 (read it as bf16), tensor '{}'", dir_, name);
    const Stored st = stored(name);
    const MatrixSlice m = slice_of(name, st, shape);
    copy_codes(st.at, m, codes.data(), name, slice_label(st));
    copy_scales(st.at, m, scales.data(), name, slice_label(st));
    ++stats_.tensors_read;
    stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  bool contains(const std::string& name) const override {
    if (tensor_shard_.count(name) != 0) return true;
    const std::optional<ExpertName> en = parse_expert_name(name);
    if (!en || fused_name(*en) == nullptr) return false;
    // The fused tensor's own expert count is only known once its file is mapped; the config's
    // is the one the model asks with.
    return config_.num_experts <= 0 || en->expert < config_.num_experts;
  }

  LoadStats stats() const override { return stats_; }

  std::string describe() const override {
    return fmt::format("safetensors checkpoint {} ({} file{}{}, {} tensors)", dir_, shards_.size(),
                       shards_.size() == 1 ? "" : "s", has_index_ ? " via index" : "",
                       tensor_shard_.size());
  }

 private:
  struct Shard {
    std::string file;  // as named in the index, relative to dir_
    std::string path;
    std::optional<SafetensorsFile> mapped;
  };

  int add_shard(const std::string& file) {
    const auto it = shard_of_file_.find(file);
    if (it != shard_of_file_.end()) return it->second;
    shards_.push_back(Shard{file, (fs::path(dir_) / file).string(), std::nullopt});
    shard_of_file_.emplace(file, static_cast<int>(shards_.size()) - 1);
    return static_cast<int>(shards_.size()) - 1;
  }

  void load_index(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) MOE_THROW("checkpoint", "{}: cannot open", path);
    std::stringstream text;
    text << in.rdbuf();
    json index;
    try {
      index = json::parse(text.str());
    } catch (const json::exception& e) {
      MOE_THROW("checkpoint", "{}: not valid JSON: {}", path, e.what());
    }
    if (!index.is_object()) {
      MOE_THROW("checkpoint", "{}: is a JSON {}, not an object", path, index.type_name());
    }
    if (const auto meta = index.find("metadata"); meta != index.end()) {
      if (!meta->is_object()) {
        MOE_THROW("checkpoint", "{}: 'metadata' is a JSON {}, not an object", path,
                  meta->type_name());
      }
      if (const auto total = meta->find("total_size");
          total != meta->end() && !(total->is_number() && total->get<double>() >= 0)) {
        MOE_THROW("checkpoint", "{}: 'metadata.total_size' is not a non-negative number", path);
      }
    }
    const auto map = index.find("weight_map");
    if (map == index.end() || !map->is_object()) {
      MOE_THROW("checkpoint", "{}: has no 'weight_map' object (tensor name -> file)", path);
    }
    for (const auto& [tensor, file] : map->items()) {
      if (!file.is_string() || file.get_ref<const std::string&>().empty()) {
        MOE_THROW("checkpoint", "{}: weight_map entry is not a file name, tensor '{}'", path,
                  tensor);
      }
      const std::string& f = file.get_ref<const std::string&>();
      const bool is_new = shard_of_file_.count(f) == 0;
      const int shard = add_shard(f);
      std::error_code ec;
      // A missing shard is reported now, not half-way through a load; this only stats it.
      if (is_new && !fs::is_regular_file(shards_[shard].path, ec)) {
        MOE_THROW("checkpoint", "{}: weight_map names '{}', which is not a file in {}, tensor '{}'",
                  path, f, dir_, tensor);
      }
      tensor_shard_.emplace(tensor, shard);
    }
  }

  // The stored tensor `name`, mapping its shard on first use.
  struct Located {
    const Shard* shard;
    const SafetensorsTensor* tensor;
  };
  Located locate(const std::string& name) {
    Shard& shard = shards_[tensor_shard_.at(name)];
    if (!shard.mapped) {
      shard.mapped = SafetensorsFile::open(shard.path);
      ++stats_.files_opened;
    }
    const SafetensorsTensor* t = shard.mapped->header().find(name);
    if (t == nullptr) {
      MOE_THROW("checkpoint",
                "{}: {} maps the tensor to this file, but its header lacks it, tensor '{}'",
                shard.path, kIndexFile, name);
    }
    return {&shard, t};
  }

  // Copies rows x cols elements of `t` (starting at element `offset`) into dst, converting.
  void copy_converted(const Located& at, int64_t offset, int64_t rows, int64_t cols,
                      int64_t row_stride, int64_t col_stride, bf16* dst,
                      const std::string& requested) {
    const SafetensorsTensor& t = *at.tensor;
    const std::span<const std::byte> bytes = at.shard->mapped->data(t);
    const int64_t esize = dtype_size_bytes(t.dtype);
    // Index arithmetic was bounded by the caller against t.shape; re-check the extreme element
    // so a logic error cannot read outside the tensor.
    const int64_t last =
        offset + (rows > 0 && cols > 0 ? (rows - 1) * row_stride + (cols - 1) * col_stride + 1 : 0);
    MOE_CHECK_AS("checkpoint", last <= t.numel, "{}: internal: slice past tensor end, tensor '{}'",
                 at.shard->path, t.name);
    const std::byte* src = bytes.data() + offset * esize;
    switch (t.dtype) {
      case SafetensorsDtype::kBF16:
        copy_2d<SafetensorsDtype::kBF16>(src, esize, rows, cols, row_stride, col_stride, dst);
        break;
      case SafetensorsDtype::kF16:
        copy_2d<SafetensorsDtype::kF16>(src, esize, rows, cols, row_stride, col_stride, dst);
        break;
      case SafetensorsDtype::kF32:
        copy_2d<SafetensorsDtype::kF32>(src, esize, rows, cols, row_stride, col_stride, dst);
        break;
      default:
        MOE_THROW("checkpoint",
                  "{}: dtype {} cannot be loaded as bf16 (BF16, F16 and F32 can), tensor '{}'",
                  at.shard->path, dtype_name(t.dtype), t.name);
    }
    stats_.bytes_read += rows * cols * esize;
    trace(at, requested);
  }

  // Stored name of the fused tensor holding this expert part, or nullptr.
  const std::string* fused_name(const ExpertName& en) const {
    const std::string base =
        en.prefix + (en.part == ExpertPart::kDown ? ".down_proj" : ".gate_up_proj");
    for (const std::string& candidate : {base, base + ".weight"}) {
      const auto it = tensor_shard_.find(candidate);
      if (it != tensor_shard_.end()) return &it->first;
    }
    return nullptr;
  }

  std::string en_hint(const std::string& name) const {
    const std::optional<ExpertName> en = parse_expert_name(name);
    if (!en) return "";
    return fmt::format(" (nor a fused '{}.{}[.weight]')", en->prefix,
                       en->part == ExpertPart::kDown ? "down_proj" : "gate_up_proj");
  }

  // Which interpretations a fused tensor's shape [E, a, b] fits, for an expert of I x H.
  static std::pair<bool, bool> fits(bool gate_up, std::span<const int64_t> s, int64_t inter,
                                    int64_t hidden) {
    if (s.size() != 3) return {false, false};
    if (gate_up) return {s[1] == 2 * inter && s[2] == hidden, s[1] == hidden && s[2] == 2 * inter};
    return {s[1] == hidden && s[2] == inter, s[1] == inter && s[2] == hidden};
  }

  FusedLayout decide_layout(const ExpertName& en, const Located& primary, int64_t inter,
                            int64_t hidden, const std::string& requested) {
    const bool gate_up = en.part != ExpertPart::kDown;
    const auto [standard, transposed] = fits(gate_up, primary.tensor->shape, inter, hidden);
    if (standard != transposed) return standard ? FusedLayout::kStandard : FusedLayout::kTransposed;
    if (!standard) {
      const std::string want =
          gate_up ? fmt::format("[E, {}, {}] or [E, {}, {}]", 2 * inter, hidden, hidden, 2 * inter)
                  : fmt::format("[E, {}, {}] or [E, {}, {}]", hidden, inter, inter, hidden);
      MOE_THROW("checkpoint",
                "{}: fused tensor '{}' has shape {}, expected {} for the model's expert shape "
                "{}, tensor '{}'",
                primary.shard->path, primary.tensor->name, shape_str(primary.tensor->shape), want,
                shape_str(gate_up ? std::vector<int64_t>{inter, hidden}
                                  : std::vector<int64_t>{hidden, inter}),
                requested);
    }
    // Ambiguous alone: ask the layer's other fused tensor (see the file comment).
    ExpertName other = en;
    other.part = gate_up ? ExpertPart::kDown : ExpertPart::kGate;
    if (const std::string* other_name = fused_name(other)) {
      const Located at = locate(*other_name);
      const auto [o_standard, o_transposed] = fits(!gate_up, at.tensor->shape, inter, hidden);
      if (o_transposed && !o_standard) return FusedLayout::kTransposed;
    }
    return FusedLayout::kStandard;
  }

  // The stored tensor behind requested name: itself, or the fused tensor holding an expert part.
  struct Stored {
    Located at;
    std::optional<ExpertName> expert;  // set for a slice of a fused tensor
  };
  Stored stored(const std::string& name) {
    if (tensor_shard_.count(name) != 0) return {locate(name), std::nullopt};
    std::optional<ExpertName> en = parse_expert_name(name);
    if (!en || fused_name(*en) == nullptr) {
      MOE_THROW("checkpoint", "{}: tensor not found in the checkpoint{}, tensor '{}'", dir_,
                en_hint(name), name);
    }
    return {locate(*fused_name(*en)), en};
  }

  // "expert E, gate|up|down" for a slice of a fused tensor, "" for a whole tensor.
  static std::string slice_label(const Stored& st) {
    return st.expert ? fmt::format("expert {}, {}", st.expert->expert, part_name(st.expert->part))
                     : std::string();
  }

  // Where the requested [shape] lies in its stored tensor (checks the stored shape).
  MatrixSlice slice_of(const std::string& name, const Stored& st, std::span<const int64_t> shape) {
    const std::vector<int64_t>& have = st.at.tensor->shape;
    MatrixSlice m;
    if (!st.expert) {
      if (!std::equal(have.begin(), have.end(), shape.begin(), shape.end())) {
        MOE_THROW("checkpoint", "{}: shape {} in the checkpoint, the model expects {}, tensor '{}'",
                  st.at.shard->path, shape_str(have), shape_str(shape), name);
      }
      // Any rank: a matrix of rows = product of the leading dimensions.
      m.cols = m.src_cols = shape.empty() ? 1 : shape.back();
      m.rows = m.src_rows = m.cols > 0 ? st.at.tensor->numel / m.cols : 0;
      return m;
    }
    const ExpertName& en = *st.expert;
    const bool gate_up = en.part != ExpertPart::kDown;
    if (shape.size() != 2) {
      MOE_THROW("checkpoint",
                "{}: expert tensor requested with shape {}, expected 2-D, tensor '{}'", dir_,
                shape_str(shape), name);
    }
    // gate/up are [I, H], down is [H, I].
    const int64_t inter = gate_up ? shape[0] : shape[1];
    const int64_t hidden = gate_up ? shape[1] : shape[0];
    const FusedLayout layout = decide_layout(en, st.at, inter, hidden, name);
    const int64_t num_experts = have[0];
    if (en.expert >= num_experts) {
      MOE_THROW("checkpoint",
                "{}: expert {} requested, but fused tensor '{}' holds {} experts, tensor '{}'",
                st.at.shard->path, en.expert, st.at.tensor->name, num_experts, name);
    }
    m.rows = shape[0];
    m.cols = shape[1];
    m.src_rows = have[1];
    m.src_cols = have[2];
    m.matrix_index = en.expert;
    m.base = en.expert * have[1] * have[2];
    const int64_t part_offset = en.part == ExpertPart::kUp ? inter : 0;
    if (layout == FusedLayout::kStandard) {
      m.r0 = part_offset;  // [E, 2I, H]: gate rows, then up rows; [E, H, I]: the whole matrix
    } else {
      m.transposed = true;  // [E, H, 2I]: gate columns, then up columns; [E, I, H]: transposed
      m.c0 = part_offset;
    }
    return m;
  }

  // Name of the scale tensor of F8 tensor `at` (throws naming both when the checkpoint lacks it).
  const std::string& scale_name_of(const Located& at) const {
    const std::string& t = at.tensor->name;
    std::vector<std::string> candidates;
    if (ends_with(t, ".weight")) {
      candidates.push_back(t.substr(0, t.size() - 7) + ".weight_scale_inv");
    } else {
      candidates = {t + "_scale_inv", t + "_scales_inv"};
    }
    for (const std::string& c : candidates) {
      const auto it = tensor_shard_.find(c);
      if (it != tensor_shard_.end()) return it->first;
    }
    MOE_THROW("checkpoint",
              "{}: F8_E4M3 tensor without its block scales: no tensor '{}' in the checkpoint, "
              "tensor '{}'",
              at.shard->path, candidates.front(), t);
  }

  // codes [rows * cols] of slice m (matrix_slice.h).
  void copy_codes(const Located& at, const MatrixSlice& m, uint8_t* codes, const std::string& name,
                  const std::string& what) {
    MOE_CHECK_AS("checkpoint", m.source_end() <= at.tensor->numel,
                 "{}: internal: slice past tensor end, tensor '{}'", at.shard->path, name);
    copy_slice_codes(reinterpret_cast<const uint8_t*>(at.shard->mapped->data(*at.tensor).data()), m,
                     codes);
    stats_.bytes_read += m.rows * m.cols;
    trace(at, what);
  }

  // scales [ceil(rows / 128), ceil(cols / 128)] of slice m: the scale tensor must have the
  // weight's block grid and dtype F32 or BF16, and each destination block must lie in one stored
  // block (else the slice has no block scales of its own: an error naming it).
  void copy_scales(const Located& weight, const MatrixSlice& m, float* scales,
                   const std::string& name, const std::string& what) {
    const std::string& scale_name = scale_name_of(weight);
    const Located at = locate(scale_name);
    const SafetensorsTensor& t = *at.tensor;
    std::vector<int64_t> want = {kernels::fp8_num_blocks(m.src_rows),
                                 kernels::fp8_num_blocks(m.src_cols)};
    if (weight.tensor->shape.size() == 3) want.insert(want.begin(), weight.tensor->shape[0]);
    if (t.shape != want) {
      MOE_THROW("checkpoint",
                "{}: scale tensor '{}' has shape {}, expected {} for the F8_E4M3 weight's shape {} "
                "in 128 x 128 blocks, tensor '{}'",
                at.shard->path, scale_name, shape_str(t.shape), shape_str(want),
                shape_str(weight.tensor->shape), name);
    }
    if (t.dtype != SafetensorsDtype::kF32 && t.dtype != SafetensorsDtype::kBF16) {
      MOE_THROW("checkpoint",
                "{}: scale tensor '{}' has dtype {} (F32 or BF16 expected), tensor '{}'",
                at.shard->path, scale_name, dtype_name(t.dtype), name);
    }
    if (!copy_slice_scales(at.shard->mapped->data(t).data(), t.dtype, m, scales)) {
      MOE_THROW("checkpoint",
                "{}: the slice of fused F8_E4M3 tensor '{}' crosses its 128 x 128 scale blocks "
                "(an expert part whose size is not a multiple of 128 and does not fit one block), "
                "tensor '{}'",
                weight.shard->path, weight.tensor->name, name);
    }
    stats_.bytes_read +=
        kernels::fp8_num_scales(m.rows, m.cols) * static_cast<int64_t>(dtype_size_bytes(t.dtype));
    trace(at, what);
  }

  // One LoadStats::tensors_touched entry ("file:tensor" or "file:tensor[what]").
  void trace(const Located& at, const std::string& what) {
    if (!trace_) return;
    stats_.tensors_touched.push_back(
        what.empty() ? fmt::format("{}:{}", at.shard->file, at.tensor->name)
                     : fmt::format("{}:{}[{}]", at.shard->file, at.tensor->name, what));
  }

  std::string dir_;
  ModelConfig config_;
  bool has_index_ = false;
  bool trace_ = false;
  std::vector<Shard> shards_;
  std::unordered_map<std::string, int> shard_of_file_;
  std::unordered_map<std::string, int> tensor_shard_;  // stored tensor name -> shard
  LoadStats stats_;
};

}  // namespace

std::unique_ptr<WeightSource> open_checkpoint(const std::string& dir, const ModelConfig& config) {
  return std::make_unique<SafetensorsCheckpoint>(dir, config);
}

}  // namespace moe::runtime
