// CPU kernels of the sparse crosscoder step over the active (token, latent) pairs
// (reasondiff/crosscoder/pairs_kernel.py builds and loads this file; sparse.py documents the maths).
//
// Every product walks the pairs latent-major and the [*, M*d] rows in column blocks of at most
// BLOCK floats that never straddle two models' segments: a [B, BLOCK] slice of the token-side
// operand (x, dL/dx_hat, or the reconstruction being accumulated) stays in the core's L2 cache
// while each W row is streamed from memory exactly once per product. torch's `embedding_bag`
// instead reads one whole 1792-float row per pair (about 1 GB per product at the paper's shapes).
//
// fp32 only; the caller checks dtypes, devices and contiguity. Sums are reordered against
// torch's kernels (blocks, SIMD lanes): equal to float rounding, not bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t BLOCK = 128;

struct ColumnBlock {
  int64_t start, width, model;
};

// Column blocks of an [*, M*d] row, each inside one model's d-wide segment.
std::vector<ColumnBlock> column_blocks(int64_t n_models, int64_t d_model) {
  std::vector<ColumnBlock> blocks;
  for (int64_t m = 0; m < n_models; ++m) {
    for (int64_t c = 0; c < d_model; c += BLOCK) {
      blocks.push_back({m * d_model + c, std::min(BLOCK, d_model - c), m});
    }
  }
  return blocks;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += a[c] * b[c];
  return s;
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

// Latent-major order of token-major pairs by a counting sort (stable: tokens stay ascending
// within a latent). Fills latent_offsets [F], latent_token, latent_latent, latent_flat [nnz].
void latent_major_order(const int64_t* token_offsets, const int64_t* token_latent, int64_t B, int64_t F, int64_t nnz,
                        int64_t* latent_offsets, int64_t* latent_token, int64_t* latent_latent, int64_t* latent_flat) {
  std::vector<int64_t> cursor(F + 1, 0);
  for (int64_t p = 0; p < nnz; ++p) ++cursor[token_latent[p] + 1];
  for (int64_t i = 0; i < F; ++i) cursor[i + 1] += cursor[i];
  std::copy(cursor.begin(), cursor.begin() + F, latent_offsets);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t stop = b + 1 < B ? token_offsets[b + 1] : nnz;
    for (int64_t p = token_offsets[b]; p < stop; ++p) {
      const int64_t i = token_latent[p];
      const int64_t q = cursor[i]++;
      latent_token[q] = b;
      latent_latent[q] = i;
      latent_flat[q] = b * F + i;
    }
  }
}

template <typename Active>
std::vector<torch::Tensor> pairs_where(int64_t B, int64_t F, Active active) {
  auto opts = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor token_offsets = torch::empty({B}, opts);
  int64_t* offsets = token_offsets.data_ptr<int64_t>();
  // pass 1: active pairs per token (rows in parallel)
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t n = 0;
      for (int64_t i = 0; i < F; ++i) n += active(b, i) ? 1 : 0;
      offsets[b] = n;
    }
  });
  int64_t nnz = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = offsets[b];
    offsets[b] = nnz;
    nnz += n;
  }
  torch::Tensor token_latent = torch::empty({nnz}, opts), token_flat = torch::empty({nnz}, opts);
  int64_t* tl = token_latent.data_ptr<int64_t>();
  int64_t* tf = token_flat.data_ptr<int64_t>();
  // pass 2: the pairs, token-major (= row-major, like torch.nonzero)
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t p = offsets[b];
      for (int64_t i = 0; i < F; ++i) {
        if (active(b, i)) {
          tl[p] = i;
          tf[p] = b * F + i;
          ++p;
        }
      }
    }
  });
  torch::Tensor latent_offsets = torch::empty({F}, opts);
  torch::Tensor latent_token = torch::empty({nnz}, opts), latent_latent = torch::empty({nnz}, opts),
                latent_flat = torch::empty({nnz}, opts);
  latent_major_order(offsets, tl, B, F, nnz, latent_offsets.data_ptr<int64_t>(), latent_token.data_ptr<int64_t>(),
                     latent_latent.data_ptr<int64_t>(), latent_flat.data_ptr<int64_t>());
  return {token_offsets, token_latent, token_flat, latent_offsets, latent_token, latent_latent, latent_flat};
}

}  // namespace

// The pairs where mask [B, F] (bool) is true, in both orders (see sparse.ActivePairs).
std::vector<torch::Tensor> pairs_from_mask(torch::Tensor mask) {
  const int64_t B = mask.size(0), F = mask.size(1);
  const bool* m = mask.data_ptr<bool>();
  return pairs_where(B, F, [m, F](int64_t b, int64_t i) { return m[b * F + i]; });
}

// The pairs where scores [B, F] (fp32) > threshold: the l1 variant's ReLU support, without a [B, F] mask.
std::vector<torch::Tensor> pairs_above(torch::Tensor scores, double threshold) {
  const int64_t B = scores.size(0), F = scores.size(1);
  const float* s = scores.data_ptr<float>();
  const float t = static_cast<float>(threshold);
  return pairs_where(B, F, [s, F, t](int64_t b, int64_t i) { return s[b * F + i] > t; });
}

// x_hat[b] = bias + sum_i f_bi W[i] over the latent-major pairs, and every row's per-model norm
// ||W[i, m]|| (all F rows: the decoder-norm penalty needs them), reading W once.
// Column blocks in parallel: each thread owns its blocks of x_hat, so no two threads write one float.
std::vector<torch::Tensor> decode(torch::Tensor latent_offsets, torch::Tensor latent_token, torch::Tensor values,
                                  torch::Tensor W, torch::Tensor bias, int64_t n_tokens, int64_t n_models,
                                  bool with_norms) {
  const int64_t F = W.size(0), K = W.size(1), B = n_tokens, nnz = latent_token.size(0);
  const int64_t d = K / n_models;
  const auto blocks = column_blocks(n_models, d);
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  torch::Tensor out = torch::empty({B, K}, W.options());
  torch::Tensor partial = with_norms ? torch::empty({n_blocks, F}, W.options()) : torch::empty({0}, W.options());
  const int64_t* lo = latent_offsets.data_ptr<int64_t>();
  const int64_t* tok = latent_token.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  const float* w = W.data_ptr<float>();
  const float* bias_p = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  float* part = with_norms ? partial.data_ptr<float>() : nullptr;
  at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t c0 = blocks[k].start, width = blocks[k].width;
      for (int64_t b = 0; b < B; ++b) {
        float* ob = o + b * K + c0;
        if (bias_p) {
          std::copy(bias_p + c0, bias_p + c0 + width, ob);
        } else {
          std::fill(ob, ob + width, 0.f);
        }
      }
      for (int64_t i = 0; i < F; ++i) {
        const float* wi = w + i * K + c0;
        if (part) part[k * F + i] = dot(wi, wi, width);
        const int64_t stop = i + 1 < F ? lo[i + 1] : nnz;
        for (int64_t p = lo[i]; p < stop; ++p) axpy(val[p], wi, o + tok[p] * K + c0, width);
      }
    }
  });
  torch::Tensor norms = torch::empty({with_norms ? F : 0, n_models}, W.options());
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
// every pair p = (b, i) (the gradient wrt the active f_bi). Latents in parallel (each thread owns
// its rows of G and its pairs' dots), column blocks inside.
std::vector<torch::Tensor> latent_sums(torch::Tensor latent_offsets, torch::Tensor latent_token, torch::Tensor weights,
                                       torch::Tensor T, torch::Tensor W, torch::Tensor row_scale, torch::Tensor out,
                                       int64_t n_latents, int64_t n_models, bool accumulate) {
  const int64_t F = n_latents, K = T.size(1), nnz = latent_token.size(0);
  const int64_t d = K / n_models;
  const auto blocks = column_blocks(n_models, d);
  const bool with_dots = W.numel() > 0, with_scale = row_scale.numel() > 0;
  torch::Tensor dots = torch::zeros({with_dots ? nnz : 0}, T.options());
  torch::Tensor weight_sums = torch::empty({F}, T.options());
  const int64_t* lo = latent_offsets.data_ptr<int64_t>();
  const int64_t* tok = latent_token.data_ptr<int64_t>();
  const float* wt = weights.data_ptr<float>();
  const float* t = T.data_ptr<float>();
  const float* w = with_dots || with_scale ? W.data_ptr<float>() : nullptr;
  const float* scale = with_scale ? row_scale.data_ptr<float>() : nullptr;
  float* g = out.data_ptr<float>();
  float* dt = with_dots ? dots.data_ptr<float>() : nullptr;
  float* ws = weight_sums.data_ptr<float>();
  // grain: enough latents per task that a thread streams long runs of W and G rows
  at::parallel_for(0, F, 256, [&](int64_t i0, int64_t i1) {
    alignas(64) float acc[BLOCK];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t stop = i + 1 < F ? lo[i + 1] : nnz;
      float s = 0.f;
      for (int64_t p = lo[i]; p < stop; ++p) s += wt[p];
      ws[i] = s;
    }
    for (const ColumnBlock& blk : blocks) {
      const int64_t c0 = blk.start, width = blk.width;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t start = lo[i], stop = i + 1 < F ? lo[i + 1] : nnz;
        std::fill(acc, acc + width, 0.f);
        const float* wi = w ? w + i * K + c0 : nullptr;
        for (int64_t p = start; p < stop; ++p) {
          const float* tb = t + tok[p] * K + c0;
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
            axpy(wp, tb, acc, width);
          }
        }
        if (scale) axpy(scale[i * n_models + blk.model], wi, acc, width);
        float* gi = g + i * K + c0;
        if (accumulate) {
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) gi[c] += acc[c];
        } else {
          std::copy(acc, acc + width, gi);
        }
      }
    }
  });
  return {out, dots, weight_sums};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pairs_from_mask", &pairs_from_mask, "active pairs of a [B, F] bool mask, both orders");
  m.def("pairs_above", &pairs_above, "active pairs where [B, F] fp32 scores > threshold, both orders");
  m.def("decode", &decode, "x_hat = bias + sum over pairs f W[i], and W's per-model row norms");
  m.def("latent_sums", &latent_sums, "G[i] (+)= sum_b w T[b] (+ scale W[i]); dots <T[b], W[i]> per pair");
}
