// CPU kernels of the sparse crosscoder step over the active (token, latent) pairs
// (reasondiff/crosscoder/pairs_kernel.py builds and loads this file; sparse.py documents the maths).
//
// Every product walks the pairs latent-major and the [*, M*d] rows in column blocks of at most
// BLOCK floats that never straddle two models' segments: a [B, BLOCK] slice of the token-side
// operand (x, dL/dx_hat, or the reconstruction being accumulated) stays in the core's L2 cache
// while each W row is streamed from memory once per product, its blocks prefetched a few latents
// ahead (rows are BLOCK-wide pieces M*d apart: too far apart for the hardware prefetcher).
// torch's `embedding_bag` instead reads one whole M*d-float row per pair (~1 GB per product at the
// paper's shapes). Full blocks use a compile-time width, so the accumulator lives in registers.
//
// fp32 only; the caller checks dtypes, devices and contiguity. Sums are reordered against
// torch's kernels (blocks, SIMD lanes): equal to float rounding, not bit for bit. Each output
// float is written by one thread in a fixed order, so results do not depend on the thread count.
// Only the headers used (not <torch/extension.h>): a third of the build time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t BLOCK = 128;
constexpr int64_t PREFETCH_LATENTS = 6;  // how many latents ahead a row's block is fetched
constexpr int64_t LINE = 16;             // floats per 64-byte cache line

struct ColumnBlock {
  int64_t start, width, model;
};

// Column blocks of an [*, M*d] row, each inside one model's d-wide segment.
std::vector<ColumnBlock> column_blocks(int64_t n_models, int64_t d_model) {
  std::vector<ColumnBlock> blocks;
  for (int64_t m = 0; m < n_models; ++m) {
    for (int64_t c = 0; c < d_model; c += BLOCK) blocks.push_back({m * d_model + c, std::min(BLOCK, d_model - c), m});
  }
  return blocks;
}

// Into L2 (prefetcht1), not L1: a block is 8 lines, and L1's few fill buffers would stall the loop.
inline void prefetch(const float* p, int64_t width, bool for_write) {
  for (int64_t c = 0; c < width; c += LINE) {
    if (for_write) {
      __builtin_prefetch(p + c, 1, 2);
    } else {
      __builtin_prefetch(p + c, 0, 2);
    }
  }
}

inline int64_t stop_of(const int64_t* offsets, int64_t i, int64_t n, int64_t total) {
  return i + 1 < n ? offsets[i + 1] : total;
}

// x_hat[b, block] += f_bi W[i, block] for latent i's pairs; returns ||W[i, block]||^2.
template <int64_t FIXED>
inline float decode_latent(const float* __restrict wi, const int64_t* tok, const float* val, int64_t start,
                           int64_t stop, float* __restrict out, int64_t K, int64_t width_rt) {
  const int64_t width = FIXED ? FIXED : width_rt;
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t c = 0; c < width; ++c) sq += wi[c] * wi[c];
  for (int64_t p = start; p < stop; ++p) {
    float* __restrict ob = out + tok[p] * K;
    const float v = val[p];
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) ob[c] += v * wi[c];
  }
  return sq;
}

// gi[block] (+)= sum_p w_p T[b_p, block] (+ scale * W[i, block]); dots[p] += <T[b_p, block], W[i, block]>
// when W is given. Returns ||gi[block]||^2 after the write.
template <int64_t FIXED>
inline float sum_latent(const float* __restrict t, const float* __restrict wi, const int64_t* tok, const float* wt,
                        float* dt, int64_t start, int64_t stop, int64_t K, bool with_scale, float scale,
                        float* __restrict gi, bool accumulate, int64_t width_rt) {
  const int64_t width = FIXED ? FIXED : width_rt;
  alignas(64) float acc[BLOCK];
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) acc[c] = 0.f;
  for (int64_t p = start; p < stop; ++p) {
    const float* __restrict tb = t + tok[p] * K;
    const float wp = wt[p];
    if (dt) {  // one read of T[b]'s block serves the dot and the sum
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < width; ++c) {
        s += tb[c] * wi[c];
        acc[c] += wp * tb[c];
      }
      dt[p] += s;
    } else {
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) acc[c] += wp * tb[c];
    }
  }
  if (with_scale) {
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) acc[c] += scale * wi[c];
  }
  float sq = 0.f;
  if (accumulate) {
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < width; ++c) {
      const float g = gi[c] + acc[c];
      gi[c] = g;
      sq += g * g;
    }
  } else {
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < width; ++c) {
      gi[c] = acc[c];
      sq += acc[c] * acc[c];
    }
  }
  return sq;
}

#if defined(__AVX512F__)
// BLOCK = 128 floats = 8 zmm registers: the W block, the accumulator and the T block each stay in
// registers; the dot uses two accumulation chains and a tree sum instead of one chain of 8 FMAs.
static_assert(BLOCK == 128, "the AVX-512 paths below hold one block in 8 zmm registers");
constexpr int V = 8;

inline float decode_latent_avx512(const float* __restrict wi, const int64_t* tok, const float* val, int64_t start,
                                  int64_t stop, float* __restrict out, int64_t K) {
  __m512 w[V];
  __m512 sq = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int k = 0; k < V; ++k) {
    w[k] = _mm512_loadu_ps(wi + 16 * k);
    sq = _mm512_fmadd_ps(w[k], w[k], sq);
  }
  for (int64_t p = start; p < stop; ++p) {
    float* __restrict ob = out + tok[p] * K;
    const __m512 v = _mm512_set1_ps(val[p]);
#pragma GCC unroll 8
    for (int k = 0; k < V; ++k) _mm512_storeu_ps(ob + 16 * k, _mm512_fmadd_ps(v, w[k], _mm512_loadu_ps(ob + 16 * k)));
  }
  return _mm512_reduce_add_ps(sq);
}

inline float sum_latent_avx512(const float* __restrict t, const float* __restrict wi, const int64_t* tok,
                               const float* wt, float* dt, int64_t start, int64_t stop, int64_t K, bool with_scale,
                               float scale, float* __restrict gi, bool accumulate, bool stream) {
  __m512 acc[V], w[V];
#pragma GCC unroll 8
  for (int k = 0; k < V; ++k) {
    acc[k] = _mm512_setzero_ps();
    w[k] = wi ? _mm512_loadu_ps(wi + 16 * k) : _mm512_setzero_ps();
  }
  for (int64_t p = start; p < stop; ++p) {
    const float* __restrict tb = t + tok[p] * K;
    const __m512 wp = _mm512_set1_ps(wt[p]);
    __m512 tv[V];
#pragma GCC unroll 8
    for (int k = 0; k < V; ++k) tv[k] = _mm512_loadu_ps(tb + 16 * k);
    if (dt) {  // one read of T[b]'s block serves the dot and the sum
      __m512 d0 = _mm512_mul_ps(tv[0], w[0]), d1 = _mm512_mul_ps(tv[1], w[1]);
#pragma GCC unroll 3
      for (int k = 2; k < V; k += 2) {
        d0 = _mm512_fmadd_ps(tv[k], w[k], d0);
        d1 = _mm512_fmadd_ps(tv[k + 1], w[k + 1], d1);
      }
      dt[p] += _mm512_reduce_add_ps(_mm512_add_ps(d0, d1));
    }
#pragma GCC unroll 8
    for (int k = 0; k < V; ++k) acc[k] = _mm512_fmadd_ps(wp, tv[k], acc[k]);
  }
  __m512 sq = _mm512_setzero_ps();
  const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 8
  for (int k = 0; k < V; ++k) {
    if (with_scale) acc[k] = _mm512_fmadd_ps(sc, w[k], acc[k]);
    if (accumulate) acc[k] = _mm512_add_ps(_mm512_loadu_ps(gi + 16 * k), acc[k]);
    if (stream) {
      _mm512_stream_ps(gi + 16 * k, acc[k]);
    } else {
      _mm512_storeu_ps(gi + 16 * k, acc[k]);
    }
    sq = _mm512_fmadd_ps(acc[k], acc[k], sq);
  }
  return _mm512_reduce_add_ps(sq);
}
#endif

// Latent-major order of token-major pairs by a counting sort, stable (tokens stay ascending within
// a latent) and parallel: each thread counts and places the pairs of one range of tokens, its
// pairs of latent i going after those of the ranges before it. The result does not depend on the
// number of ranges. With `scores`, also their values (+ offset[i]) at the pairs, latent-major.
void latent_major_order(const int64_t* token_offsets, const int64_t* token_latent, int64_t B, int64_t F, int64_t nnz,
                        int64_t* latent_offsets, int64_t* latent_token, int64_t* latent_latent, int64_t* latent_flat,
                        const float* scores, const float* offset, float* latent_values) {
  constexpr int64_t MIN_PAIRS = 16384;  // per range: below this a second thread costs more than it saves
  const int64_t n_ranges = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nnz / MIN_PAIRS));
  std::vector<int64_t> first_token(n_ranges + 1, B);  // range r: tokens [first_token[r], first_token[r + 1])
  for (int64_t r = 0; r < n_ranges; ++r) {
    first_token[r] = std::lower_bound(token_offsets, token_offsets + B, nnz * r / n_ranges) - token_offsets;
  }
  first_token[0] = 0;
  std::vector<std::vector<int64_t>> cursor(n_ranges);
  at::parallel_for(0, n_ranges, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      cursor[r].assign(F, 0);
      const int64_t p0 = first_token[r] < B ? token_offsets[first_token[r]] : nnz;
      const int64_t p1 = first_token[r + 1] < B ? token_offsets[first_token[r + 1]] : nnz;
      for (int64_t p = p0; p < p1; ++p) ++cursor[r][token_latent[p]];
    }
  });
  int64_t next = 0;
  for (int64_t i = 0; i < F; ++i) {
    latent_offsets[i] = next;
    for (int64_t r = 0; r < n_ranges; ++r) {
      const int64_t n = cursor[r][i];
      cursor[r][i] = next;
      next += n;
    }
  }
  at::parallel_for(0, n_ranges, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t* at_latent = cursor[r].data();
      for (int64_t b = first_token[r]; b < first_token[r + 1]; ++b) {
        const int64_t stop = stop_of(token_offsets, b, B, nnz);
        for (int64_t p = token_offsets[b]; p < stop; ++p) {
          const int64_t i = token_latent[p];
          const int64_t q = at_latent[i]++;
          latent_token[q] = b;
          latent_latent[q] = i;
          latent_flat[q] = b * F + i;
          if (scores) latent_values[q] = scores[b * F + i] + (offset ? offset[i] : 0.f);
        }
      }
    }
  });
}

// Appends the columns of row where the row is active to `found` (ascending).
inline void active_columns(const bool* row, int64_t F, std::vector<int32_t>& found) {
  for (int64_t i = 0; i < F; ++i) {
    if (row[i]) found.push_back(static_cast<int32_t>(i));
  }
}

// The columns where row + offset > threshold (offset: [F], or null for none).
inline void active_columns(const float* row, const float* offset, float threshold, int64_t F,
                           std::vector<int32_t>& found) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 t = _mm512_set1_ps(threshold);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + 16 <= F; i += 16) {
    __m512 v = _mm512_loadu_ps(row + i);
    if (offset) v = _mm512_add_ps(v, _mm512_loadu_ps(offset + i));
    const __mmask16 hit = _mm512_cmp_ps_mask(v, t, _CMP_GT_OQ);
    if (hit) {
      const size_t n = found.size();
      found.resize(n + 16);
      _mm512_mask_compressstoreu_epi32(found.data() + n, hit, idx);
      found.resize(n + __builtin_popcount(hit));
    }
    idx = _mm512_add_epi32(idx, step);
  }
#endif
  for (; i < F; ++i) {
    if (row[i] + (offset ? offset[i] : 0.f) > threshold) found.push_back(static_cast<int32_t>(i));
  }
}

// The pairs in both orders from a per-row scan: rows in parallel chunks, each chunk collecting its
// rows' active columns in one read, then placed at their offsets.
template <typename Scan>
std::vector<at::Tensor> pairs_where(int64_t B, int64_t F, Scan scan, const float* scores, const float* offset) {
  auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor token_offsets = at::empty({B}, opts);
  int64_t* offsets = token_offsets.data_ptr<int64_t>();
  constexpr int64_t CHUNK = 32;
  const int64_t n_chunks = (B + CHUNK - 1) / CHUNK;
  std::vector<std::vector<int32_t>> found(n_chunks);
  at::parallel_for(0, n_chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t b = k * CHUNK; b < std::min(B, (k + 1) * CHUNK); ++b) {
        const size_t before = found[k].size();
        scan(b, found[k]);
        offsets[b] = static_cast<int64_t>(found[k].size() - before);
      }
    }
  });
  int64_t nnz = 0;
  std::vector<int64_t> chunk_start(n_chunks);
  for (int64_t b = 0; b < B; ++b) {
    if (b % CHUNK == 0) chunk_start[b / CHUNK] = nnz;
    const int64_t n = offsets[b];
    offsets[b] = nnz;
    nnz += n;
  }
  at::Tensor token_latent = at::empty({nnz}, opts), token_flat = at::empty({nnz}, opts);
  int64_t* tl = token_latent.data_ptr<int64_t>();
  int64_t* tf = token_flat.data_ptr<int64_t>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const std::vector<int32_t>& cols = found[k];
      int64_t p = chunk_start[k];
      for (size_t q = 0; q < cols.size(); ++q) tl[p + static_cast<int64_t>(q)] = cols[q];
      for (int64_t b = k * CHUNK; b < std::min(B, (k + 1) * CHUNK); ++b) {
        const int64_t stop = stop_of(offsets, b, B, nnz);
        for (int64_t r = offsets[b]; r < stop; ++r) tf[r] = b * F + tl[r];
      }
    }
  });
  at::Tensor latent_offsets = at::empty({F}, opts);
  at::Tensor latent_token = at::empty({nnz}, opts), latent_latent = at::empty({nnz}, opts),
                latent_flat = at::empty({nnz}, opts);
  at::Tensor latent_values = at::empty({scores ? nnz : 0}, at::TensorOptions().dtype(at::kFloat));
  latent_major_order(offsets, tl, B, F, nnz, latent_offsets.data_ptr<int64_t>(), latent_token.data_ptr<int64_t>(),
                     latent_latent.data_ptr<int64_t>(), latent_flat.data_ptr<int64_t>(), scores, offset,
                     scores ? latent_values.data_ptr<float>() : nullptr);
  return {token_offsets, token_latent, token_flat, latent_offsets, latent_token, latent_latent, latent_flat,
          latent_values};
}

}  // namespace

// The pairs where mask [B, F] (bool) is true, in both orders (see sparse.ActivePairs); the last
// tensor is empty (no values).
std::vector<at::Tensor> pairs_from_mask(at::Tensor mask) {
  const int64_t B = mask.size(0), F = mask.size(1);
  const bool* m = mask.data_ptr<bool>();
  return pairs_where(
      B, F, [m, F](int64_t b, std::vector<int32_t>& found) { active_columns(m + b * F, F, found); }, nullptr,
      nullptr);
}

// The pairs where scores [B, F] (fp32) + offset [F] > threshold: the l1 variant's ReLU support,
// without a [B, F] mask, and with the encoder bias as the offset, without the pass over [B, F]
// that adding it to the GEMM's output costs. An empty offset adds nothing. The last tensor holds
// scores + offset at the pairs, latent-major (the active f).
std::vector<at::Tensor> pairs_above(at::Tensor scores, double threshold, at::Tensor offset) {
  const int64_t B = scores.size(0), F = scores.size(1);
  const float* s = scores.data_ptr<float>();
  const float* off = offset.numel() ? offset.data_ptr<float>() : nullptr;
  const float t = static_cast<float>(threshold);
  return pairs_where(
      B, F, [s, off, F, t](int64_t b, std::vector<int32_t>& found) { active_columns(s + b * F, off, t, F, found); },
      s, off);
}

// x_hat[b] = bias + sum_i f_bi W[i] over the latent-major pairs, and every row's per-model norm
// ||W[i, m]|| (all F rows: the decoder-norm penalty needs them), reading W once.
// Column blocks in parallel: each thread owns its blocks of x_hat, so no two threads write one float.
std::vector<at::Tensor> decode(at::Tensor latent_offsets, at::Tensor latent_token, at::Tensor values,
                                  at::Tensor W, at::Tensor bias, int64_t n_tokens, int64_t n_models,
                                  bool with_norms) {
  const int64_t F = W.size(0), K = W.size(1), B = n_tokens, nnz = latent_token.size(0);
  const auto blocks = column_blocks(n_models, K / n_models);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  at::Tensor out = at::empty({B, K}, W.options());
  at::Tensor partial = at::empty({n_blocks, F}, W.options());
  const int64_t* lo = latent_offsets.data_ptr<int64_t>();
  const int64_t* tok = latent_token.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  const float* w = W.data_ptr<float>();
  const float* bias_p = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  float* part = partial.data_ptr<float>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t c0 = blocks[k].start, width = blocks[k].width;
      for (int64_t b = 0; b < B; ++b) {
        float* ob = o + b * K + c0;
        if (bias_p) {
          std::memcpy(ob, bias_p + c0, width * sizeof(float));
        } else {
          std::fill(ob, ob + width, 0.f);
        }
      }
      for (int64_t i = 0; i < F; ++i) {
        if (i + PREFETCH_LATENTS < F) prefetch(w + (i + PREFETCH_LATENTS) * K + c0, width, false);
        const float* wi = w + i * K + c0;
        const int64_t start = lo[i], stop = stop_of(lo, i, F, nnz);
#if defined(__AVX512F__)
        if (width == BLOCK) {
          part[k * F + i] = decode_latent_avx512(wi, tok, val, start, stop, o + c0, K);
          continue;
        }
#endif
        part[k * F + i] = width == BLOCK ? decode_latent<BLOCK>(wi, tok, val, start, stop, o + c0, K, width)
                                         : decode_latent<0>(wi, tok, val, start, stop, o + c0, K, width);
      }
    }
  });
  at::Tensor norms = at::empty({with_norms ? F : 0, n_models}, W.options());
  if (with_norms) {
    float* nr = norms.data_ptr<float>();
    at::parallel_for(0, F, 1024, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t m = 0; m < n_models; ++m) nr[i * n_models + m] = 0.f;
        for (int64_t k = 0; k < n_blocks; ++k) nr[i * n_models + blocks[k].model] += part[k * F + i];
        for (int64_t m = 0; m < n_models; ++m) nr[i * n_models + m] = std::sqrt(nr[i * n_models + m]);
      }
    });
  }
  return {out, norms};
}

// G[i] (+)= sum_b w_bi T[b] over latent i's pairs (+ row_scale[i, m] * W[i, m] when row_scale is
// given: the decoder-norm penalty's gradient), and, when W is given, dots[p] = <T[b], W[i]> for
// every pair p = (b, i) (the gradient wrt the active f_bi). Also sum_i w_bi per latent (the
// encoder-bias gradient) and ||G[i]||^2 of the rows as written (the grad-norm clip's share).
// Latents in parallel (each thread owns its rows of G and its pairs' dots), column blocks inside.
std::vector<at::Tensor> latent_sums(at::Tensor latent_offsets, at::Tensor latent_token, at::Tensor weights,
                                       at::Tensor T, at::Tensor W, at::Tensor row_scale, at::Tensor out,
                                       int64_t n_latents, int64_t n_models, bool accumulate) {
  const int64_t F = n_latents, K = T.size(1), nnz = latent_token.size(0);
  const auto blocks = column_blocks(n_models, K / n_models);
  const bool with_dots = W.numel() > 0, with_scale = row_scale.numel() > 0;
  at::Tensor dots = at::zeros({with_dots ? nnz : 0}, T.options());
  at::Tensor weight_sums = at::empty({F}, T.options());
  at::Tensor row_sq = at::zeros({F}, T.options());
  const int64_t* lo = latent_offsets.data_ptr<int64_t>();
  const int64_t* tok = latent_token.data_ptr<int64_t>();
  const float* wt = weights.data_ptr<float>();
  const float* t = T.data_ptr<float>();
  const float* w = with_dots || with_scale ? W.data_ptr<float>() : nullptr;
  const float* scale = with_scale ? row_scale.data_ptr<float>() : nullptr;
  float* g = out.data_ptr<float>();
  float* dt = with_dots ? dots.data_ptr<float>() : nullptr;
  float* ws = weight_sums.data_ptr<float>();
  float* sq = row_sq.data_ptr<float>();
  // grain: enough latents per task that a thread streams long runs of rows
  at::parallel_for(0, F, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float s = 0.f;
      for (int64_t p = lo[i]; p < stop_of(lo, i, F, nnz); ++p) s += wt[p];
      ws[i] = s;
    }
    for (const ColumnBlock& blk : blocks) {
      const int64_t c0 = blk.start, width = blk.width;
      // a fresh gradient goes out with streaming stores (whole cache lines, no read for ownership:
      // the rows are read next by Adam, long after they left the cache)
      const bool stream = !accumulate && width == BLOCK && (reinterpret_cast<uintptr_t>(g + c0) % 64 == 0) &&
                          (K * sizeof(float)) % 64 == 0;
      for (int64_t i = i0; i < i1; ++i) {
        if (i + PREFETCH_LATENTS < i1) {
          if (w) prefetch(w + (i + PREFETCH_LATENTS) * K + c0, width, false);
          if (!stream) prefetch(g + (i + PREFETCH_LATENTS) * K + c0, width, true);
        }
        const int64_t start = lo[i], stop = stop_of(lo, i, F, nnz);
        const float* wi = w ? w + i * K + c0 : nullptr;
        const float sc = with_scale ? scale[i * n_models + blk.model] : 0.f;
        float* gi = g + i * K + c0;
#if defined(__AVX512F__)
        if (width == BLOCK) {
          sq[i] += sum_latent_avx512(t + c0, wi, tok, wt, dt, start, stop, K, with_scale, sc, gi, accumulate, stream);
          continue;
        }
#endif
        sq[i] += width == BLOCK
                     ? sum_latent<BLOCK>(t + c0, wi, tok, wt, dt, start, stop, K, with_scale, sc, gi, accumulate, width)
                     : sum_latent<0>(t + c0, wi, tok, wt, dt, start, stop, K, with_scale, sc, gi, accumulate, width);
      }
    }
#if defined(__AVX512F__)
    _mm_sfence();  // the streamed rows are visible before anyone reads them
#endif
  });
  return {out, dots, weight_sums, row_sq};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pairs_from_mask", &pairs_from_mask, "active pairs of a [B, F] bool mask, both orders");
  m.def("pairs_above", &pairs_above, "active pairs where [B, F] fp32 scores + offset > threshold, both orders");
  m.def("decode", &decode, "x_hat = bias + sum over pairs f W[i], and W's per-model row norms");
  m.def("latent_sums", &latent_sums, "G[i] (+)= sum_b w T[b] (+ scale W[i]); dots <T[b], W[i]> per pair");
}
