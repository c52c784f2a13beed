// Host side of the CUDA fused Langevin step: launch geometry, alignment check, device guard
// (cuda_launch.cuh), launch on the caller's stream. The kernel is in langevin_step_kernel.cuh.
//
// Nothing here synchronises or allocates, so a step can be captured in a CUDA graph; the schedule
// entries and the RNG state are read by the kernel from device memory when given as pointers.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_launch.cuh"
#include "langevin_step.h"
#include "langevin_step_kernel.cuh"

namespace ebm {
namespace {

constexpr const char* OP = "langevin_step_cuda";

void check(cudaError_t err, const char* what) { cuda_host::check(err, OP, what); }

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <class T>
void launch(const StepArgs& a, cudaStream_t stream) {
  using cuda::GROUP;
  using cuda::THREADS;
  const int64_t groups = (a.D + GROUP - 1) / GROUP;  // per sample
  int tx = 1;
  while (tx < THREADS && tx < groups) tx <<= 1;
  const int rows = THREADS / tx;
  const int64_t chunks = groups > 0 ? (groups + tx - 1) / tx : 1;  // D = 0 still writes the energies
  const int64_t row_blocks = (a.B + rows - 1) / rows;
  const int64_t blocks = row_blocks * chunks;
  if (blocks > 0x7FFFFFFF) {
    throw std::invalid_argument("langevin_step_cuda: B * D = " + std::to_string(a.B * a.D) +
                                " elements is too large for one launch");
  }
  const size_t smem = sizeof(float) * (static_cast<size_t>(a.M) * TABLE_COLUMNS + static_cast<size_t>(rows) * a.N);
  const size_t vec_bytes = GROUP * sizeof(typename T::storage);
  const bool vec = aligned(a.x, vec_bytes) && aligned(a.out, vec_bytes) && aligned(a.g, vec_bytes) &&
                   a.x_stride % GROUP == 0 && a.out_stride % GROUP == 0 && a.g_stride_n % GROUP == 0 &&
                   a.g_stride_b % GROUP == 0;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(static_cast<unsigned>(tx), static_cast<unsigned>(rows));
  if (vec) {
    cuda::langevin_step_kernel<T, true><<<grid, block, smem, stream>>>(a, chunks);
  } else {
    cuda::langevin_step_kernel<T, false><<<grid, block, smem, stream>>>(a, chunks);
  }
  check(cudaGetLastError(), "kernel launch");
}

}  // namespace

void langevin_step_cuda(const StepArgs& a, uintptr_t stream_handle) {
  if (a.B == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const cuda_host::DeviceGuard guard(OP, a.energy_out, stream);  // energy_out: always a device tensor when B > 0
  switch (a.dtype) {
    case DTYPE_F16:
      launch<F16>(a, stream);
      break;
    case DTYPE_BF16:
      launch<BF16>(a, stream);
      break;
    default:
      launch<F32>(a, stream);
      break;
  }
}

}  // namespace ebm
