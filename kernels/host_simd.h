// Function multiversioning for the host's hot loops, in one place. The default build targets
// baseline x86-64 (SSE2), so the loops that decide speed get clones for wider vector units, picked
// at load time (GCC and clang's target_clones on x86-64; nothing elsewhere or when the build
// already targets AVX2, e.g. MOE_EP_NATIVE):
//   MOE_CLONES_AVX2       x86-64-v3 (AVX2, FMA) and the baseline
//   MOE_CLONES_AVX512     x86-64-v4 (AVX-512), x86-64-v3 and the baseline
// Loops whose bits must not depend on the clone (a multiply then an add, as the CUDA bodies and
// the naive references compute them) must not let the compiler fuse the two into an FMA, which
// rounds once: MOE_NO_CONTRACT turns contraction off for one function (GCC's optimize attribute;
// clang takes `#pragma clang fp contract(off)` in the file instead), and MOE_CLONES_AVX512_EXACT is
// MOE_CLONES_AVX512 with it (GCC; clang gets no clones there, plain loops).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MOE_CLONES_AVX2 __attribute__((target_clones("arch=x86-64-v3", "default")))
#define MOE_CLONES_AVX512 \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#if !defined(__clang__)
#define MOE_CLONES_AVX512_EXACT                                                \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                 optimize("fp-contract=off")))
#endif
#endif
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define MOE_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define MOE_NO_CONTRACT
#endif

#ifndef MOE_CLONES_AVX2
#define MOE_CLONES_AVX2
#endif
#ifndef MOE_CLONES_AVX512
#define MOE_CLONES_AVX512
#endif
#ifndef MOE_CLONES_AVX512_EXACT
#define MOE_CLONES_AVX512_EXACT MOE_NO_CONTRACT
#endif
