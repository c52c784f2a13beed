// Host side of the CUDA fused Langevin step: launch geometry, alignment check, device guard, launch
// on the caller's stream. The kernel is in langevin_step_kernel.cuh.
//
// Nothing here synchronises or allocates, so a step can be captured in a CUDA graph; the schedule
// entries and the RNG state are read by the kernel from device memory when given as pointers.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "langevin_step.h"
#include "langevin_step_kernel.cuh"

namespace ebm {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ebm_fast._C langevin_step_cuda: ") + what + " failed: " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// Makes the device holding `ptr` current for the launch (the stream belongs to it: launching on
// another device's stream fails), and restores the caller's device afterwards. Not used while the
// stream is being captured into a CUDA graph: the capturing code already runs on the stream's device,
// and only stream-ordered calls are then made.
class DeviceGuard {
 public:
  DeviceGuard(const void* ptr, cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone) return;
    cudaPointerAttributes attr;
    check(cudaPointerGetAttributes(&attr, ptr), "cudaPointerGetAttributes");
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
      throw std::invalid_argument("langevin_step_cuda: the tensors must be in CUDA device memory");
    }
    int current = -1;
    check(cudaGetDevice(&current), "cudaGetDevice");
    if (attr.device != current) {
      check(cudaSetDevice(attr.device), "cudaSetDevice");
      previous_ = current;
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

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
  const DeviceGuard guard(a.energy_out, stream);  // energy_out: always a device tensor when B > 0
  switch (a.dtype) {
    case DTYPE_F16:
      launch<cuda::F16>(a, stream);
      break;
    case DTYPE_BF16:
      launch<cuda::BF16>(a, stream);
      break;
    default:
      launch<cuda::F32>(a, stream);
      break;
  }
}

}  // namespace ebm
