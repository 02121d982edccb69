// OnednnBf16Gemm: a per-shape cache of oneDNN matmul primitives (2.x API) on one CPU engine and
// stream. Memory objects wrap the caller's pointers per call (cheap); primitives never are.
#include "kernels/cpu/onednn_gemm.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "kernels/common/check.h"
#include "kernels/cpu/blas_util.h"

#ifdef MOE_EP_HAVE_DNNL
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace moe::kernels::cpu {

int64_t OnednnBf16Gemm::padded_rows(int64_t m) {
  if (m <= 8) return m;
  if (m <= 256) return (m + 15) / 16 * 16;
  return (m + 63) / 64 * 64;
}

#ifdef MOE_EP_HAVE_DNNL
namespace {

using dnnl::memory;

const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
}

// A [m, k] row-major, W [n, k] row-major seen as B [k, n] (format ba), C [m, n] row-major.
dnnl::matmul::primitive_desc make_pd(const dnnl::engine& engine, int64_t m, int64_t n, int64_t k,
                                     bool c_is_bf16) {
  const memory::desc a({m, k}, memory::data_type::bf16, memory::format_tag::ab);
  const memory::desc b({k, n}, memory::data_type::bf16, memory::format_tag::ba);
  const memory::desc c({m, n}, c_is_bf16 ? memory::data_type::bf16 : memory::data_type::f32,
                       memory::format_tag::ab);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), engine);
}

}  // namespace

const OnednnInfo& onednn_info() {
  static const OnednnInfo info = [] {
    OnednnInfo i;
    i.built_with_onednn = true;
    i.isa = isa_name(dnnl::get_effective_cpu_isa());
    try {
      dnnl::engine engine(dnnl::engine::kind::cpu, 0);
      const auto pd = make_pd(engine, 64, 256, 512, false);
      i.has_bf16_matmul = true;
      i.probe_impl = pd.impl_info_str();
    } catch (const dnnl::error&) {
      i.has_bf16_matmul = false;
      i.probe_impl = "none (oneDNN has no bf16 matmul for this ISA)";
    }
    return i;
  }();
  return info;
}

struct OnednnBf16Gemm::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<std::tuple<int64_t, int64_t, int64_t, bool>, dnnl::matmul> primitives;
};

OnednnBf16Gemm::OnednnBf16Gemm() {
  MOE_CHECK_AS("backend", onednn_info().has_bf16_matmul,
               "oneDNN has no bf16 matmul on this CPU (ISA {})", onednn_info().isa);
  impl_ = std::make_unique<Impl>();
}

OnednnBf16Gemm::~OnednnBf16Gemm() = default;

void OnednnBf16Gemm::run(const bf16* a, const bf16* w, int64_t m, int64_t n, int64_t k, void* c,
                         bool c_is_bf16) {
  if (m <= 0 || n <= 0) return;
  MOE_CHECK(k > 0, "bf16 gemm: k = {} must be positive", k);
  const int64_t mp = padded_rows(m);
  const auto key = std::make_tuple(mp, n, k, c_is_bf16);
  auto it = impl_->primitives.find(key);
  if (it == impl_->primitives.end()) {
    it = impl_->primitives.emplace(key, dnnl::matmul(make_pd(impl_->engine, mp, n, k, c_is_bf16)))
             .first;
  }
  const auto c_type = c_is_bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  memory a_mem({{mp, k}, memory::data_type::bf16, memory::format_tag::ab}, impl_->engine,
               const_cast<bf16*>(a));
  memory b_mem({{k, n}, memory::data_type::bf16, memory::format_tag::ba}, impl_->engine,
               const_cast<bf16*>(w));
  memory c_mem({{mp, n}, c_type, memory::format_tag::ab}, impl_->engine, c);
  // oneDNN's OpenMP threads follow the BLAS thread count the process chose (ranks share cores).
  const int threads = std::max(1, blas_threads());
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
  it->second.execute(impl_->stream,
                     {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  impl_->stream.wait();
}

int64_t OnednnBf16Gemm::num_primitives() const {
  return static_cast<int64_t>(impl_->primitives.size());
}

#else  // built without oneDNN

const OnednnInfo& onednn_info() {
  static const OnednnInfo info{false, false, "unknown (built without oneDNN)", "none"};
  return info;
}

struct OnednnBf16Gemm::Impl {};

OnednnBf16Gemm::OnednnBf16Gemm() {
  MOE_THROW("backend", "this moe-ep was built without oneDNN (libdnnl-dev)");
}
OnednnBf16Gemm::~OnednnBf16Gemm() = default;
void OnednnBf16Gemm::run(const bf16*, const bf16*, int64_t, int64_t, int64_t, void*, bool) {
  MOE_THROW("backend", "this moe-ep was built without oneDNN (libdnnl-dev)");
}
int64_t OnednnBf16Gemm::num_primitives() const {
  return 0;
}

#endif

}  // namespace moe::kernels::cpu
