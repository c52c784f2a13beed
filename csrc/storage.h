// Storage types of the state and the gradients (float32, float16, bfloat16) and `clampf`, shared by
// the CPU and the CUDA kernels: values are loaded to fp32, all arithmetic is fp32, and results are
// rounded back to the storage type once, to nearest even, as torch's .to(dtype) does.
//
// Each type T has: T::storage (the word in memory), T::load(storage) -> float,
// T::store(float) -> storage, T::nonfinite(storage) -> int (1 for inf or NaN).
// On the device the conversions are CUDA's intrinsics; on the host they are c10's bit-exact
// branch-free conversions (the CPU kernel's `omp simd` loops vectorise them).
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "philox.h"  // EBM_HD, float_bits, bits_float

namespace ebm {

struct F32 {
  using storage = float;
  static EBM_HD float load(float v) { return v; }
  static EBM_HD float store(float f) { return f; }
  static EBM_HD int nonfinite(float v) { return (float_bits(v) & 0x7F800000u) == 0x7F800000u; }
};

struct F16 {
  using storage = uint16_t;
  static EBM_HD float load(uint16_t h) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(h));
#else
    // c10::detail::fp16_ieee_to_fp32_value (branch-free: denormals through a float multiply)
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result =
        sign | (two_w < (1u << 27) ? float_bits(denormalized) : float_bits(normalized));
    return bits_float(result);
#endif
  }
  static EBM_HD uint16_t store(float f) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(f));
#else
    // c10::detail::fp16_ieee_from_fp32_value (round to nearest even, NaN -> 0x7E00)
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = float_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = bits_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = float_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
  }
  static EBM_HD int nonfinite(uint16_t h) { return (h & 0x7C00u) == 0x7C00u; }
};

struct BF16 {
  using storage = uint16_t;
  static EBM_HD float load(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }
  static EBM_HD uint16_t store(float f) {
#if defined(__CUDA_ARCH__)
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
    // c10::detail::round_to_nearest_even
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
#endif
  }
  static EBM_HD int nonfinite(uint16_t h) { return (h & 0x7F80u) == 0x7F80u; }
};

// NaN-propagating clamp (torch.clamp) for lo <= hi; lo = -inf / hi = +inf leave v unchanged. Two
// plain selects: GCC 12 did not if-convert the nested form, leaving the CPU update loop scalar.
EBM_HD float clampf(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

}  // namespace ebm
