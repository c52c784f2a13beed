// Host-side helpers of the CUDA entry points (langevin_step_cuda.cu, mcmc_step_cuda.cu): a CUDA
// error turned into an exception that names the op, and the device guard every launch takes.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace ebm {
namespace cuda_host {

inline void check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("ebm_fast._C ") + op + ": " + what + " failed: " + cudaGetErrorName(err) +
                             " (" + cudaGetErrorString(err) + ")");
  }
}

// Makes the device holding `ptr` current for the launch (the stream belongs to it: launching on
// another device's stream fails), and restores the caller's device afterwards. Not used while the
// stream is being captured into a CUDA graph: the capturing code already runs on the stream's device,
// and only stream-ordered calls are then made.
class DeviceGuard {
 public:
  DeviceGuard(const char* op, const void* ptr, cudaStream_t stream) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream, &capture), op, "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone) return;
    cudaPointerAttributes attr;
    check(cudaPointerGetAttributes(&attr, ptr), op, "cudaPointerGetAttributes");
    if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
      throw std::invalid_argument(std::string(op) + ": the tensors must be in CUDA device memory");
    }
    int current = -1;
    check(cudaGetDevice(&current), op, "cudaGetDevice");
    if (attr.device != current) {
      check(cudaSetDevice(attr.device), op, "cudaSetDevice");
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

}  // namespace cuda_host
}  // namespace ebm
