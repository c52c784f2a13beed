// The fused MALA/HMC operations on device memory (contract: ebm_fast/mcmc_reference.py). One block
// per chain: thread 0 evaluates the program into shared memory, the block runs the row pieces of
// mcmc_step.h over D (move), or reduces the row sums, decides, and copies the proposal into an
// accepted chain (accept). Nothing here synchronises with the host or allocates, so both can be
// captured in a CUDA graph; the launch takes the device guard of cuda_launch.cuh.
#include <cuda_runtime.h>

#include "cuda_launch.cuh"
#include "mcmc_step.h"
#include "program_eval.h"

namespace ebm {
namespace {

constexpr int THREADS = 128;

__global__ void move_kernel(MCMCArgs a) {
  __shared__ float w[MAX_LEAVES];
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) {
    float root = 0.0f;
    eval_program<1>(a.table, a.M, a.N, a.e + b, a.B, 1, w, 1, &root);
    a.energy[b] = root;
  }
  __syncthreads();
  const uint64_t seed = seed_of(a), step = step_of(a);
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) move_at(a, w, b, d, seed, step);
}

__global__ void accept_kernel(MCMCArgs a) {
  __shared__ float w[MAX_LEAVES];
  __shared__ float sums[2][THREADS];
  __shared__ float e_new;
  __shared__ bool acc;
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) eval_program<1>(a.table, a.M, a.N, a.e + b, a.B, 1, w, 1, &e_new);
  __syncthreads();
  const uint64_t seed = seed_of(a), step = step_of(a);
  float forward = 0.0f, reverse = 0.0f;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) accept_terms_at(a, w, b, d, seed, step, forward, reverse);
  sums[0][threadIdx.x] = forward;
  sums[1][threadIdx.x] = reverse;
  __syncthreads();
  for (int s = THREADS / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      sums[0][threadIdx.x] += sums[0][threadIdx.x + s];
      sums[1][threadIdx.x] += sums[1][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) acc = decide(a, b, e_new, sums[0][0], sums[1][0], seed, step);
  __syncthreads();
  if (!acc) return;
  if (threadIdx.x < a.N) a.e_state[threadIdx.x * a.B + b] = a.e[threadIdx.x * a.B + b];
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) take_proposal_at(a, b, d);
}

// Launches one block per chain on the device that holds the state (B > 0).
template <void (*KERNEL)(MCMCArgs)>
void launch(const MCMCArgs& a, uintptr_t stream_handle, const char* op) {
  if (a.B == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const cuda_host::DeviceGuard guard(op, a.energy, stream);  // energy: a device tensor in both operations
  KERNEL<<<static_cast<unsigned>(a.B), THREADS, 0, stream>>>(a);
  cuda_host::check(cudaGetLastError(), op, "kernel launch");
}

}  // namespace

void mcmc_move_cuda(const MCMCArgs& a, uintptr_t stream) { launch<move_kernel>(a, stream, "mcmc_move_cuda"); }

void mcmc_accept_cuda(const MCMCArgs& a, uintptr_t stream) { launch<accept_kernel>(a, stream, "mcmc_accept_cuda"); }

}  // namespace ebm
