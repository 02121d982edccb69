// The CPU ops' declarations and contracts, written once and included twice: inside
// moe::kernels::cpu by ops.h (the fast versions) and inside moe::kernels::cpu::reference by
// reference.h (the naive loops the tests hold them against), so both have the same signatures by
// construction. No include guard and no includes of its own: the including header provides
// kernels/common/bf16.h and kernels/op_args.h and opens the namespace.
// No knowledge of ranks, files or the model: raw pointers, sizes in elements, row-major.

// bf16 -> fp32, n elements (exact: bits << 16).
void bf16_to_f32(const bf16* src, int64_t n, float* dst);
// fp32 -> bf16 (round to nearest even), n elements.
void f32_to_bf16(const float* src, int64_t n, bf16* dst);

// out [n, hidden] = table [vocab, hidden] rows ids[0..n). Throws on an id outside [0, vocab).
void embedding(const bf16* table, int64_t vocab, int64_t hidden, const int32_t* ids, int64_t n,
               float* out);

// y [rows, dim] = x * rsqrt(mean(x^2) + eps) * w, per row, fp32. x and y may alias.
void rmsnorm(const float* x, const bf16* w, int64_t rows, int64_t dim, float eps, float* y);

// y [rows, out] = x [rows, in] . W^T, W [out, in] bf16 or e4m3 with block scales (op_args.h).
void linear(const float* x, WeightView w, int64_t rows, int64_t in, int64_t out, float* y);

// Rotate-half (NeoX) RoPE in place on x [rows, heads, head_dim]; row r sits at positions[r].
// inv_freq[i] = theta^(-2i/head_dim); out = x*cos + rotate_half(x)*sin.
void rope(float* x, const int32_t* positions, int64_t rows, int64_t heads, int64_t head_dim,
          double theta);

// Causal GQA attention with a KV cache. For each sequence: writes its new k/v rows into the
// cache at past_len.., then each new token attends to cache positions [0, its position].
// q [T, H*D], k/v [T, KV*D], out [T, H*D]; scale 1/sqrt(D); softmax in fp32.
void attention(const float* q, const float* k, const float* v, const AttentionSeq* seqs,
               int64_t num_seqs, AttentionShape shape, KvCacheView cache, float* out);

// Router: softmax in fp32 over all experts of logits [rows, experts], then top-k (descending
// probability, ties to the lower expert id); renormalise the k weights to sum 1 if `renormalise`.
// ids, weights: [rows, k].
void router_topk(const float* logits, int64_t rows, int64_t experts, int64_t k, bool renormalise,
                 int32_t* ids, float* weights);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

// Dense SwiGLU MLP: y [rows, hidden] = down(silu(gate(x)) * up(x)).
void swiglu_mlp(const float* x, ExpertWeights w, int64_t rows, int64_t hidden, int64_t inter,
                float* y);

// Grouped experts: for every group g and entry p in [g.begin, g.begin + g.count):
//   out[p] = down_g(silu(gate_g(x[row_index[p]])) * up_g(x[row_index[p]]))
// x [R, hidden], row_index [P] (host), out [P, hidden].
void grouped_expert_swiglu(const float* x, int64_t hidden, int64_t inter, const ExpertGroup* groups,
                           int64_t num_groups, const int32_t* row_index, float* out);

// x[i] += y[i].
void add_inplace(float* x, const float* y, int64_t n);

// dst [n, width] = src rows idx[0..n).
void gather_rows(const float* src, int64_t width, const int32_t* idx, int64_t n, float* dst);
