// The fused Langevin step (docs/contract.md §3): its argument struct, the constants the Python side shares, and
// the entry points of the CPU and CUDA kernels.
//
// StepArgs is the whole native interface of the op: ext.cpp binds it once to Python (ebm_fast._C.StepArgs,
// one attribute per field, pointers as integers), ebm_fast/_native.py fills it in one function
// (`step_args`), and the same filled struct goes to langevin_step_cpu or langevin_step_cuda. A new
// argument is a field here, a line in ext.cpp's binding and a line in `_native.step_args`.
#pragma once

#include <stdint.h>

namespace ebm {

// Constants exported by the extension (ext.cpp) and checked against the Python side when
// ebm_fast._C is loaded (ebm_fast/_native.py): a mismatch is an error naming the constant.
enum DType : int { DTYPE_F32 = 0, DTYPE_F16 = 1, DTYPE_BF16 = 2 };  // _native.DTYPE_CODES
enum Order : int { ORDER_ULA = 0, ORDER_NOISE_FIRST = 1 };          // step_reference.ORDERS
enum NodeKind : int { NODE_LEAF = 0, NODE_SUM = 1, NODE_LSE = 2 };  // program.LEAF, SUM, LSE
constexpr int MAX_NODES = 64;     // program.MAX_NODES: per-sample scratch of the evaluator
constexpr int MAX_LEAVES = 32;    // program.MAX_LEAVES: flag[0] is an int32 bitmask, one bit a leaf
constexpr int TABLE_COLUMNS = 5;  // program.COLUMNS

struct StepArgs {
  // ---- tensors (addresses; strides in elements; inner stride 1) ----
  const void* x = nullptr;   // [B, D] state dtype, row stride x_stride
  void* out = nullptr;       // [B, D] state dtype, row stride out_stride (may be x: in place)
  int dtype = DTYPE_F32;     // DType of x, out and g
  int64_t B = 0, D = 0, x_stride = 0, out_stride = 0;
  const void* g = nullptr;   // [N, B, D] leaf gradients, strides (g_stride_n, g_stride_b, 1)
  int64_t g_stride_n = 0, g_stride_b = 0;
  const float* e = nullptr;  // [N, B] float32 leaf energies, contiguous
  const float* table = nullptr;  // [M, TABLE_COLUMNS] float32 program table, contiguous
  int M = 0, N = 0;
  float* energy_out = nullptr;   // [B] float32: the composed energy at x
  int32_t* flag = nullptr;       // [2] int32, OR-ed into: bit i of flag[0] = leaf i non-finite,
                                 // flag[1] = 1 when the new state holds a non-finite value
  // ---- scalars, each as (pointer, value): a non-null pointer is read instead of the value (in
  // device memory for CUDA), so a captured CUDA graph reads fresh schedule entries and RNG state
  // on every replay ----
  const float* step_size_ptr = nullptr;  // eta
  float step_size = 0.0f;
  const float* noise_ptr = nullptr;      // sigma
  float noise = 0.0f;
  const int64_t* seed_ptr = nullptr;     // the Philox key's 64 bits (docs/contract.md §4)
  uint64_t seed = 0;
  const int64_t* step_ptr = nullptr;     // the Philox counter's step (docs/contract.md §4), >= 0
  int64_t step = 0;
  // ---- fixed over a chain ----
  int order = ORDER_ULA;  // Order
  bool has_clip = false;  // g = clamp(g, -grad_clip, grad_clip) element-wise
  float grad_clip = 0.0f;
  bool has_clamp = false;  // x' clamped to [lo, hi]
  float lo = 0.0f, hi = 0.0f;
};

// Host memory; blocks until done. OpenMP over (sample, block of D).
void langevin_step_cpu(const StepArgs& a);

#if defined(EBM_FAST_WITH_CUDA)
// Device memory; enqueued on `stream` (a cudaStream_t as an integer), asynchronous.
void langevin_step_cuda(const StepArgs& a, uintptr_t stream);
#endif

}  // namespace ebm
