// Weight-only int8 linear layers: `y = x · (q · s)ᵀ` with int8 weights `q [out, in]`, one fp32
// scale per output row `s [out]`, and fp32 activations, computed without materialising the fp32
// weight. Token-by-token decoding multiplies a few rows by every weight matrix: the product is
// bound by reading the weights, and reading a quarter of the bytes is the speed-up. libtorch's
// own `_weight_int8pack_mm` computes the same product but ran 7x slower than the fp32 matmul on
// the AVX2 cores here (no AVX-512), hence this kernel. Errors come back as messages (guarded.hpp).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "guarded.hpp"

namespace {

using rlhf::guarded;

// Rows of `x` per pass over a weight row: each weight is read once for this many rows.
constexpr int64_t kRowBlock = 4;

// y[r, n] = s[n] · Σ_k x[r, k] q[n, k] for rows r < rows (≤ kRowBlock) and outputs n in [n0, n1).
void rows_scalar(const float* x, int64_t rows, int64_t in, const int8_t* q, const float* s, float* y,
                 int64_t out, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = q + n * in;
    for (int64_t r = 0; r < rows; ++r) {
      float sum = 0.f;
      for (int64_t k = 0; k < in; ++k) sum += x[r * in + k] * static_cast<float>(w[k]);
      y[r * out + n] = sum * s[n];
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 v) {
  __m128 low = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  low = _mm_add_ps(low, _mm_movehl_ps(low, low));
  low = _mm_add_ss(low, _mm_shuffle_ps(low, low, 1));
  return _mm_cvtss_f32(low);
}

// The same with AVX2: 8 weights widened to fp32 at a time, multiplied into each row's sums.
__attribute__((target("avx2,fma"))) void rows_avx2(const float* x, int64_t rows, int64_t in, const int8_t* q,
                                                    const float* s, float* y, int64_t out, int64_t n0, int64_t n1) {
  const int64_t vectorized = in - in % 8;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = q + n * in;
    __m256 sums[kRowBlock] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t k = 0; k < vectorized; k += 8) {
      __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k));
      __m256 weights = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
      for (int64_t r = 0; r < rows; ++r) sums[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * in + k), weights, sums[r]);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float sum = horizontal_sum(sums[r]);
      for (int64_t k = vectorized; k < in; ++k) sum += x[r * in + k] * static_cast<float>(w[k]);
      y[r * out + n] = sum * s[n];
    }
  }
}
#endif

bool has_avx2() {
#if defined(__x86_64__)
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
#else
  return false;
#endif
}

}  // namespace

extern "C" {

// `input [rows, in]` (fp32, CPU) times the int8 `weight [out, in]` scaled per row by `scales
// [out]`: a new `[rows, out]` fp32 tensor in `*output`. Output rows are split across libtorch's
// intra-op threads.
char* rlhf_int8_linear(const at::Tensor* input, const at::Tensor* weight, const at::Tensor* scales, at::Tensor** output) {
  return guarded([&] {
    TORCH_CHECK(input->dim() == 2 && weight->dim() == 2 && input->size(1) == weight->size(1),
                "int8 linear: input ", input->sizes(), " does not match weight ", weight->sizes());
    TORCH_CHECK(input->scalar_type() == at::kFloat && weight->scalar_type() == at::kChar && scales->scalar_type() == at::kFloat,
                "int8 linear: expects fp32 input, int8 weight and fp32 scales");
    at::Tensor x = input->contiguous(), q = weight->contiguous(), s = scales->contiguous();
    const int64_t rows = x.size(0), in = x.size(1), out = q.size(0);
    at::Tensor y = at::empty({rows, out}, x.options());
    const float* xp = x.data_ptr<float>();
    const int8_t* qp = q.data_ptr<int8_t>();
    const float* sp = s.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    auto kernel = has_avx2() ?
#if defined(__x86_64__)
                             rows_avx2
#else
                             rows_scalar
#endif
                             : rows_scalar;
    // A grain of 16 output rows keeps each thread's share of the weight large enough to pay for
    // waking it.
    at::parallel_for(0, out, 16, [&](int64_t n0, int64_t n1) {
      for (int64_t r = 0; r < rows; r += kRowBlock) {
        const int64_t block = std::min(kRowBlock, rows - r);
        kernel(xp + r * in, block, in, qp, sp, yp + r * out, out, n0, n1);
      }
    });
    *output = new at::Tensor(y);
  });
}

}  // extern "C"
