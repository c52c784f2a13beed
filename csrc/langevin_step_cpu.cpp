// The fused Langevin step (docs/contract.md §3) on the CPU: OpenMP over (sample, block of D), vectorised
// inner loops. Per call:
//   1. per group of LANES samples: leaf weights w[b, :] and the root energy from the program table;
//   2. per block of up to BLOCK elements of one row: the Philox normals of the block (4 per Philox
//      call), x, g = sum_i w_i G[i] (checking G for non-finite values), the update, the store.
// Step 2's loops are `omp simd` over local buffers, so they vectorise although `out` may alias `x`.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "langevin_step.h"
#include "philox.h"
#include "program_eval.h"
#include "storage.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EBM_X86_AVX2_PHILOX 1
#endif

namespace ebm {
namespace {

// Elements per work item. Smaller blocks keep the buffers in L1: one step at N = 3, B = 128,
// D = 12288 (fp32, with noise) took 5.2 ms of one core's time at 128, 5.5-5.9 ms at 256, 6.7 ms at
// 1024 (2-core AMD EPYC, medians of 40 steps).
constexpr int64_t BLOCK = 128;
// Below this many elements one thread does all the work: ~0.4 ms of it with noise. On a busy
// machine a parallel region waits for its slowest thread to be scheduled: at N = 2, B = 16,
// D = 3072 (49K elements) two threads took 8-16 ms against 0.3 ms for one thread, with six other
// processes on the 2-core test machine (0.19 ms against 0.3 ms at a quieter moment).
constexpr int64_t PARALLEL_MIN_ELEMENTS = int64_t{1} << 17;
// Work items a thread takes at a time (2048 elements). Dynamic, so that a thread that runs keeps
// taking work while another waits to be scheduled; under that load static and dynamic measured the
// same (32-40 ms of wall time for 2 threads, paper shape, against ~10 ms of one core's time then).
constexpr int DYNAMIC_CHUNK = 16;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// The wheel must run on any x86-64: one clone per ISA level, chosen at load time (never -march).
#define EBM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EBM_CPU_CLONES
#endif

// ---- Philox bits of groups q0 .. q0 + nq - 1, planar: r_k[t] is word k of group q0 + t -------------
// Buffers hold PHILOX_GROUPS (a multiple of 8) words each.
constexpr int64_t PHILOX_GROUPS = ((BLOCK + 8) / 4 + 7) / 8 * 8;

void philox_planar_generic(uint32_t* r0, uint32_t* r1, uint32_t* r2, uint32_t* r3, uint64_t q0, int64_t nq,
                           uint64_t seed, uint64_t step) {
#pragma omp simd
  for (int64_t t = 0; t < nq; ++t) {
    const uint64_t q = q0 + static_cast<uint64_t>(t);
    uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32);
    uint32_t c2 = static_cast<uint32_t>(step), c3 = static_cast<uint32_t>(step >> 32);
    philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    r0[t] = c0;
    r1[t] = c1;
    r2[t] = c2;
    r3[t] = c3;
  }
}

#if defined(EBM_X86_AVX2_PHILOX)
// The same with AVX2 intrinsics, 8 groups per iteration: 1.43 ms against 3.9 ms for GCC 12's
// vectorisation of the generic loop (which widens to 64-bit lanes and narrows back every round) for
// 393K groups on one core of the 2-core AMD EPYC; bit-identical (checked across 2^32 carries of q).
__attribute__((target("avx2"))) inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                          // 64-bit products, lanes 0,2,4,6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);    // lanes 1,3,5,7
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) void philox_planar_avx2(uint32_t* r0, uint32_t* r1, uint32_t* r2, uint32_t* r3,
                                                        uint64_t q0, int64_t nq, uint64_t seed, uint64_t step) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(PHILOX_ROUND_A));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(PHILOX_ROUND_B));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i step_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
  const __m256i step_hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += PHILOX_KEY_A;
    k1 += PHILOX_KEY_B;
  }
  for (int64_t t = 0; t < nq; t += 8) {
    const uint64_t q = q0 + static_cast<uint64_t>(t);
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q))), lane);
    // a lane whose low word wrapped past 2^32 (c0 < lane, unsigned) carries into the high word
    const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(lane, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q >> 32))), carry);
    __m256i c2 = step_lo, c3 = step_hi;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      __m256i hi_b, lo_b, hi_a, lo_a;
      mulhilo8(c2, round_b, hi_b, lo_b);
      mulhilo8(c0, round_a, hi_a, lo_a);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi_b, c1), key0[r]);
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi_a, c3), key1[r]);
      c1 = lo_b;
      c3 = lo_a;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r0 + t), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r1 + t), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r2 + t), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r3 + t), c3);
  }
}
#endif

void philox_planar(uint32_t* r0, uint32_t* r1, uint32_t* r2, uint32_t* r3, uint64_t q0, int64_t nq, uint64_t seed,
                   uint64_t step) {
#if defined(EBM_X86_AVX2_PHILOX)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    philox_planar_avx2(r0, r1, r2, r3, q0, nq, seed, step);
    return;
  }
#endif
  philox_planar_generic(r0, r1, r2, r3, q0, nq, seed, step);
}

// Everything a block needs, resolved once per call.
struct Ctx {
  const StepArgs* a;
  const float* w;  // [B, N] leaf weights
  float eta, sigma, clip, lo, hi;
  uint64_t seed, step;
};

// g[k] = (first ? 0 : g[k]) + weight(k) * G[k] over k < n; returns a sum that is NaN exactly when
// some G[k] is inf or NaN (v - v).
template <class T, class Weight>
inline __attribute__((always_inline)) float accumulate(const typename T::storage* gr, int64_t n, bool first,
                                                       float* g, Weight weight) {
  float chk = 0.0f;
  if (first) {
#pragma omp simd reduction(+ : chk)
    for (int64_t k = 0; k < n; ++k) {
      const float v = T::load(gr[k]);
      g[k] = weight(k) * v;
      chk += v - v;
    }
  } else {
#pragma omp simd reduction(+ : chk)
    for (int64_t k = 0; k < n; ++k) {
      const float v = T::load(gr[k]);
      g[k] += weight(k) * v;
      chk += v - v;
    }
  }
  return chk;
}

// The update of a span of n elements given their normals xin[0..n): elements [d0, d0 + n) of row b
// (rows == 1), or whole rows b .. b + rows - 1 stored back to back (rows > 1: d0 == 0, n == rows * D,
// every row stride equal to D), which run as one vector loop with per-element leaf weights.
template <class T>
inline __attribute__((always_inline)) void span_impl(const Ctx& c, int64_t b, int64_t rows, int64_t d0, int64_t n,
                                                     const float* xin, float* g, float* xv, uint32_t& bad_leaf,
                                                     int& bad_state) {
  using S = typename T::storage;
  const StepArgs& a = *c.a;
  const S* xr = static_cast<const S*>(a.x) + b * a.x_stride + d0;
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) xv[k] = T::load(xr[k]);

  const float* wb = c.w + b * a.N;
  for (int i = 0; i < a.N; ++i) {
    const S* gr = static_cast<const S*>(a.g) + i * a.g_stride_n + b * a.g_stride_b + d0;
    float chk;
    if (rows == 1) {
      const float wi = wb[i];
      chk = accumulate<T>(gr, n, i == 0, g, [wi](int64_t) { return wi; });
    } else {
      alignas(64) float wk[BLOCK];  // leaf i's weight of each element
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < a.D; ++d) wk[r * a.D + d] = wb[r * a.N + i];
      }
      chk = accumulate<T>(gr, n, i == 0, g, [&wk](int64_t k) { return wk[k]; });
    }
    if (chk != chk) bad_leaf |= 1u << i;
  }

  S* orow = static_cast<S*>(a.out) + b * a.out_stride + d0;
  const float eta = c.eta, clip = c.clip, lo = c.lo, hi = c.hi;
  // ula: clamp(moved + sigma xi); noise_first: clamp(moved) + sigma xi. Both as
  // clamp(moved + s_in xi) + s_out xi with one of s_in, s_out zero: adding 0 changes no value.
  const bool noise_first = a.order == ORDER_NOISE_FIRST;
  const float s_in = noise_first ? 0.0f : c.sigma, s_out = noise_first ? c.sigma : 0.0f;
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t k = 0; k < n; ++k) {
    const float gk = clampf(g[k], -clip, clip);
    const float moved = xv[k] - eta * gk;
    const float nv = clampf(moved + s_in * xin[k], lo, hi) + s_out * xin[k];
    const S sv = T::store(nv);
    orow[k] = sv;
    bad |= T::nonfinite(sv);
  }
  bad_state |= bad;
}

// One item of work: elements [d0, d0 + n) of rows b0 .. b0 + rows - 1. Several rows share an item
// only when they are short (rows > 1 implies d0 == 0, n == D and rows * D <= BLOCK): their noise is
// one contiguous range of the flat index j, drawn in one vectorised Philox call. Per-row items at
// B = 1024, D = 2 cost 118 us a step, against 19 us for the same 2048 elements as B = 64, D = 32.
template <class T>
inline __attribute__((always_inline)) void block_impl(const Ctx& c, int64_t b0, int64_t rows, int64_t d0,
                                                      int64_t n, uint32_t& bad_leaf, int& bad_state) {
  const StepArgs& a = *c.a;
  alignas(64) float xi[BLOCK + 8];  // normals of elements d0 - off .. (whole Philox groups)
  alignas(64) float g[BLOCK];
  alignas(64) float xv[BLOCK];

  const int64_t span = (rows - 1) * a.D + n;  // flat elements covered (<= BLOCK)
  int64_t off = 0;
  if (c.sigma != 0.0f) {
    const uint64_t j0 = static_cast<uint64_t>(b0 * a.D + d0);
    const uint64_t q0 = j0 >> 2;
    const int64_t nq = static_cast<int64_t>(((j0 + span + 3) >> 2) - q0);
    off = static_cast<int64_t>(j0 & 3u);
    alignas(64) uint32_t r0[PHILOX_GROUPS], r1[PHILOX_GROUPS], r2[PHILOX_GROUPS], r3[PHILOX_GROUPS];
    philox_planar(r0, r1, r2, r3, q0, nq, c.seed, c.step);
#pragma omp simd
    for (int64_t t = 0; t < nq; ++t) {
      box_muller(uint_to_uniform(r0[t]), uint_to_uniform(r1[t]), xi[4 * t], xi[4 * t + 1]);
      box_muller(uint_to_uniform(r2[t]), uint_to_uniform(r3[t]), xi[4 * t + 2], xi[4 * t + 3]);
    }
  } else {
    memset(xi, 0, sizeof(float) * span);  // sigma = 0: no RNG (sigma * xi would be 0 anyway)
  }

  if (rows > 1 && a.x_stride == a.D && a.out_stride == a.D && a.g_stride_b == a.D) {
    span_impl<T>(c, b0, rows, 0, span, xi + off, g, xv, bad_leaf, bad_state);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      span_impl<T>(c, b0 + r, 1, d0, n, xi + off + r * a.D, g, xv, bad_leaf, bad_state);
    }
  }
}


EBM_CPU_CLONES void process_block(const Ctx& c, int64_t b0, int64_t rows, int64_t d0, int64_t n,
                                  uint32_t& bad_leaf, int& bad_state) {
  switch (c.a->dtype) {
    case DTYPE_F16:
      block_impl<F16>(c, b0, rows, d0, n, bad_leaf, bad_state);
      break;
    case DTYPE_BF16:
      block_impl<BF16>(c, b0, rows, d0, n, bad_leaf, bad_state);
      break;
    default:
      block_impl<F32>(c, b0, rows, d0, n, bad_leaf, bad_state);
      break;
  }
}

// ---- the program, LANES samples per call -----------------------------------------------------
// One sample at a time the table walk's branches and index loads cost ~40 ns a sample even for an
// And; across 16 lanes (structure of arrays, `omp simd`) ~5 ns for an And and ~22 ns for an Or of
// two leaves (B = 4096, one thread; ~170 ns one sample at a time).
constexpr int LANES = 16;

// Weights w[b, :] and root energies of samples b0 .. b0 + nl - 1; bit i of bad_leaf set when leaf
// i's energy is inf or NaN in one of them.
EBM_CPU_CLONES void eval_program_group(const StepArgs& a, int64_t b0, int nl, float* w, uint32_t& bad_leaf) {
  eval_program<LANES>(a.table, a.M, a.N, a.e + b0, a.B, nl, w + b0 * a.N, a.N, a.energy_out + b0);
  for (int i = 0; i < a.N; ++i) {
    const float* ei = a.e + i * a.B + b0;
    float chk = 0.0f;  // v - v is NaN exactly when v is inf or NaN
#pragma omp simd reduction(+ : chk)
    for (int l = 0; l < nl; ++l) chk += ei[l] - ei[l];
    if (chk != chk) bad_leaf |= 1u << i;
  }
}

}  // namespace

void langevin_step_cpu(const StepArgs& a) {
  const int64_t B = a.B, D = a.D;
  const int N = a.N;
  Ctx c;
  c.a = &a;
  c.eta = a.step_size_ptr ? *a.step_size_ptr : a.step_size;
  c.sigma = a.noise_ptr ? *a.noise_ptr : a.noise;
  c.seed = a.seed_ptr ? static_cast<uint64_t>(*a.seed_ptr) : a.seed;
  c.step = static_cast<uint64_t>(a.step_ptr ? *a.step_ptr : a.step);
  c.clip = a.has_clip ? a.grad_clip : INFINITY;
  c.lo = a.has_clamp ? a.lo : -INFINITY;
  c.hi = a.has_clamp ? a.hi : INFINITY;

  std::vector<float> w(static_cast<size_t>(B) * N);
  c.w = w.data();
  uint32_t bad_leaf = 0;
  // Programs, LANES samples per item. A parallel region only paid past ~1 ms of this work on a
  // shared 2-core machine (one sample at a time at B = 4096: two threads 1.9 ms, one 0.69 ms), hence the threshold of ~40K samples of a three-node program.
  const int64_t groups = (B + LANES - 1) / LANES;
#pragma omp parallel for schedule(static) reduction(| : bad_leaf) if (B * a.M >= 131072)
  for (int64_t t = 0; t < groups; ++t) {
    const int64_t b0 = t * LANES;
    eval_program_group(a, b0, static_cast<int>(std::min<int64_t>(LANES, B - b0)), w.data(), bad_leaf);
  }

  int bad_state = 0;
  if (B > 0 && D > 0) {
    // Short rows are grouped (whole rows, up to BLOCK elements per item); long rows are split.
    const int64_t rows_per_item = D <= BLOCK / 2 ? BLOCK / D : 1;
    const int64_t blocks_per_row = rows_per_item > 1 ? 1 : (D + BLOCK - 1) / BLOCK;
    const int64_t row_groups = (B + rows_per_item - 1) / rows_per_item;
    const int64_t items = row_groups * blocks_per_row;
#pragma omp parallel for schedule(dynamic, DYNAMIC_CHUNK) reduction(| : bad_leaf, bad_state) \
    if (B * D >= PARALLEL_MIN_ELEMENTS)
    for (int64_t t = 0; t < items; ++t) {
      const int64_t grp = t / blocks_per_row;
      const int64_t b0 = grp * rows_per_item;
      const int64_t d0 = (t - grp * blocks_per_row) * BLOCK;
      process_block(c, b0, std::min(rows_per_item, B - b0), d0, std::min(BLOCK, D - d0), bad_leaf, bad_state);
    }
  }
  if (bad_leaf) __atomic_fetch_or(reinterpret_cast<uint32_t*>(a.flag), bad_leaf, __ATOMIC_RELAXED);
  if (bad_state) __atomic_fetch_or(a.flag + 1, 1, __ATOMIC_RELAXED);
}

}  // namespace ebm
