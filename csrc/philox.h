// The noise of the fused step (docs/contract.md §4), shared by the CPU and the CUDA kernels.
//
// xi(seed, step, j) for flattened element j = b*D + d: with q = j / 4 and r = j % 4,
//   (r0, r1, r2, r3) = Philox4x32-10(key = seed, counter = (lo32 q, hi32 q, lo32 step, hi32 step)),
//   u_k = uint_to_uniform_float(r_k), (n0, n1) = box_muller(u0, u1), (n2, n3) = box_muller(u2, u3),
//   xi = n_r
// -- the definitions of triton.language.random, written out in ebm_fast/rng.py (the reference).
//
// On the device the transcendental functions are CUDA's precise logf/sincosf (what Triton's
// libdevice calls use). On the host they are the branch-free Cephes polynomials below, so that
// `#pragma omp simd` loops over Philox groups vectorise (glibc's scalar logf/sinf/cosf do not);
// their error against float64, measured exhaustively over every float of the ranges used here
// (x in [1e-7, 1) for log, x in [0, 2 pi] for sin/cos; g++ -O2, with and without FMA), is 0.83 ulp
// for log and at most 7.8e-8 absolute for sin/cos (1.5 ulp for sin; up to 14 ulp for cos next to
// its zeros, where the value itself is tiny) -- far inside the 1e-5 the backends must agree to.
#pragma once

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define EBM_HD __host__ __device__ __forceinline__
#else
#define EBM_HD inline __attribute__((always_inline))
#endif

namespace ebm {

constexpr uint32_t PHILOX_KEY_A = 0x9E3779B9u;
constexpr uint32_t PHILOX_KEY_B = 0xBB67AE85u;
constexpr uint32_t PHILOX_ROUND_A = 0xD2511F53u;
constexpr uint32_t PHILOX_ROUND_B = 0xCD9E8D57u;
constexpr float UNIFORM_SCALE = 4.6566127342e-10f;  // Triton's: largest s with (2^31 - 1) s < 1
constexpr float TWO_PI = 6.283185307179586f;

EBM_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

EBM_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

EBM_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// Philox4x32-10 on counter (c0, c1, c2, c3) with key (k0, k1), in place.
EBM_HD void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                          uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC unroll 10  // unrolled, the `omp simd` loop over Philox groups vectorises
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi_b, lo_b, hi_a, lo_a;
    mulhilo32(PHILOX_ROUND_B, c2, hi_b, lo_b);
    mulhilo32(PHILOX_ROUND_A, c0, hi_a, lo_a);
    const uint32_t n0 = hi_b ^ c1 ^ k0;
    const uint32_t n2 = hi_a ^ c3 ^ k1;
    c0 = n0;
    c1 = lo_b;
    c2 = n2;
    c3 = lo_a;
    k0 += PHILOX_KEY_A;
    k1 += PHILOX_KEY_B;
  }
}

// Triton's uint_to_uniform_float for 32 bits: [0, 1). `~s` is `-s - 1` without the overflow at
// INT32_MIN.
EBM_HD float uint_to_uniform(uint32_t r) {
  int32_t s = static_cast<int32_t>(r);
  s = s < 0 ? ~s : s;
  return static_cast<float>(s) * UNIFORM_SCALE;
}

#if !defined(__CUDA_ARCH__)
// log(x) for a positive normal finite x (here x in [1e-7, 1)); Cephes logf, branch-free.
EBM_HD float host_log_positive(float x) {
  const uint32_t ix = float_bits(x);
  int e = static_cast<int>(ix >> 23) - 126;                   // x = m * 2^e, m in [0.5, 1)
  float m = bits_float((ix & 0x007FFFFFu) | 0x3F000000u);
  const bool below = m < 0.707106781186547524f;               // fold m into [sqrt(1/2), sqrt(2)) - 1
  e = below ? e - 1 : e;
  m = below ? (m + m) - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * fe;
}

// sin and cos of x for 0 <= x < 2^13 (here x in [0, 2 pi)); Cephes sinf/cosf, branch-free.
EBM_HD void host_sincos_positive(float x, float& s, float& c) {
  int j = static_cast<int>(x * 1.27323954473516f);  // octant: x * 4/pi
  j += j & 1;                                         // map to an even octant, |z| <= pi/4
  const float y = static_cast<float>(j);
  const float z = ((x - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const float zz = z * z;
  const float sp = ((-1.9515295891e-4f * zz + 8.3321608736e-3f) * zz - 1.6666654611e-1f) * zz * z + z;
  const float cp =
      ((2.443315711809948e-5f * zz - 1.388731625493765e-3f) * zz + 4.166664568298827e-2f) * zz * zz -
      0.5f * zz + 1.0f;
  const int oct = j & 7;  // 0: (sp, cp)  2: (cp, -sp)  4: (-sp, -cp)  6: (-cp, sp)
  const bool swap = (oct & 2) != 0;
  const float s0 = swap ? cp : sp;
  const float c0 = swap ? sp : cp;
  s = (oct & 4) ? -s0 : s0;
  c = ((oct + 2) & 4) ? -c0 : c0;
}
#endif

// Triton's pair_uniform_to_normal in fp32.
EBM_HD void box_muller(float u1, float u2, float& n1, float& n2) {
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float th = TWO_PI * u2;
  float s, c;
#if defined(__CUDA_ARCH__)
  const float r = sqrtf(-2.0f * logf(u1));
  sincosf(th, &s, &c);
#else
  const float r = __builtin_sqrtf(-2.0f * host_log_positive(u1));
  host_sincos_positive(th, s, c);
#endif
  n1 = r * c;
  n2 = r * s;
}

// The four normals of Philox group q at `step` of the chain keyed by `seed` (xi for j = 4q .. 4q+3).
EBM_HD void normal4(uint64_t seed, uint64_t step, uint64_t q, float& n0, float& n1, float& n2,
                    float& n3) {
  uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32);
  uint32_t c2 = static_cast<uint32_t>(step), c3 = static_cast<uint32_t>(step >> 32);
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(uint_to_uniform(c0), uint_to_uniform(c1), n0, n1);
  box_muller(uint_to_uniform(c2), uint_to_uniform(c3), n2, n3);
}

}  // namespace ebm
