// The one statement of where a bf16-compute backend rounds fp32 activations to bf16 (round to
// nearest even, kernels/common/bf16.h). The CUDA backend (always bf16) and the CPU backend's bf16
// mode (kernels/cpu/bf16_ops.cpp) both follow it and static_assert the flags they implement;
// tests/bf16 holds both to it. docs/numerics.md explains the choices.
#pragma once

namespace moe::kernels::rounding {

// Invariants of every bf16 GEMM: weights are bf16 as loaded (never re-rounded), products of two
// bf16 values are exact in fp32, and sums accumulate in fp32. Whatever is not listed below stays
// fp32 in bf16 mode too: embedding rows (exact: the table is bf16), rmsnorm, rope, q, attention
// scores, softmax and output, router softmax / top-k, residual adds, the combine sums.

// linear(x, W) -> y (router, q/k/v/o projections, lm_head): x is rounded, y stays fp32.
inline constexpr bool kLinearInput = true;
inline constexpr bool kLinearOutput = false;

// attention: each new k and v row is rounded once, when it is appended to the KV cache; every
// later read sees the rounded value (the CUDA cache is bf16; the CPU keeps rounded fp32).
inline constexpr bool kKvCacheAppend = true;

// The stages of a SwiGLU MLP y = down(silu(gate(x)) * up(x)) that are stored in bf16.
struct SwigluRounding {
  bool input;       // x before the gate and up GEMMs
  bool gate_up;     // the gate and up GEMM outputs
  bool activation;  // silu(gate) * up, computed in fp32 from the (possibly rounded) gate/up
  bool output;      // the down GEMM output
};

// swiglu_mlp (dense MLP layers): cublasGemmEx writes fp32 gate/up/down.
inline constexpr SwigluRounding kDenseSwiglu{true, false, true, false};
// grouped_expert_swiglu (the experts): cublasGemmGroupedBatchedEx offers bf16 in and out only,
// so every stage is bf16; out rows are the bf16 down outputs widened to fp32.
inline constexpr SwigluRounding kGroupedSwiglu{true, true, true, true};

}  // namespace moe::kernels::rounding
