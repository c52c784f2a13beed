// The fused Langevin step (SPEC §3): arguments and entry points of the CPU and CUDA kernels.
//
// The extension takes raw pointers, sizes, strides (in elements) and dtype codes; ebm_fast/_native.py
// packs them and ebm_fast/ops.py has validated the tensors before. ext.cpp checks the invariants the
// kernels rely on (sizes, table size, dtype code) and fills StepArgs.
#pragma once

#include <stdint.h>

namespace ebm {

enum DType : int { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 };  // _native.DTYPE_CODES
enum Order : int { ORDER_ULA = 0, ORDER_NOISE_FIRST = 1 };          // step_reference.ORDERS

struct StepArgs {
  const void* x;          // [B, D] state dtype, row stride x_stride, inner stride 1
  void* out;              // [B, D] state dtype, row stride out_stride (may be x)
  int dtype;              // DType
  int64_t B, D, x_stride, out_stride;
  const void* g;          // [N, B, D] state dtype, strides (g_stride_n, g_stride_b, 1)
  int64_t g_stride_n, g_stride_b;
  const float* e;         // [N, B] float32, contiguous
  const float* table;     // [M, 5] float32 program table
  int M, N;
  // Scalars as (pointer, value): a non-null pointer is read instead of the value (on the device
  // for CUDA), so a captured CUDA graph reads fresh schedule entries and RNG state on replay.
  const float* step_size_ptr;
  float step_size;
  const float* noise_ptr;
  float noise;
  const int64_t* seed_ptr;
  uint64_t seed;
  const int64_t* step_ptr;
  int64_t step;
  int order;              // Order
  bool has_clip;
  float grad_clip;
  bool has_clamp;
  float lo, hi;
  float* energy_out;      // [B] float32
  int32_t* flag;          // [2] int32, OR-ed into
};

// Host memory; blocks until done. OpenMP over (sample, chunk of D).
void langevin_step_cpu(const StepArgs& a);

#if defined(EBM_FAST_WITH_CUDA)
// Device memory; enqueued on `stream` (a cudaStream_t as an integer), asynchronous.
void langevin_step_cuda(const StepArgs& a, uintptr_t stream);
#endif

}  // namespace ebm
