// Device code of the fused Langevin step (docs/contract.md §3); the host launcher is langevin_step_cuda.cu.
//
// Grid: one block per (block of `rows` samples, chunk of 4*tx elements of D), blockDim = (tx, rows)
// with tx * rows = THREADS; tx is the smallest power of two with 4*tx >= D, capped at THREADS, so
// large images get one sample per block and small D (2-D toys) many samples per block. Each thread
// owns one group of 4 consecutive elements of one sample (one Philox call when the group is aligned,
// i.e. D % 4 == 0; otherwise two).
//
//   A. every thread: the table and the rows' leaf energies -> shared memory; its x and normals ->
//      registers (independent of the weights, so they overlap the next phase's latency)
//   B. thread x == 0 of each row: evaluates the program (ebm::eval_program<1>) in place over the leaf
//      energies in shared memory -> weights; the chunk-0 block of a row writes the root energy and
//      the non-finite-energy flag bits (so each is written once per sample)
//   C. every thread: g = sum_i w_i G[i] over its group, clip, update, clamp, store; non-finite flags
//      are OR-reduced over the warp and set with one atomicOr per warp (none when all is finite).
#pragma once

#include <stdint.h>

#include "langevin_step.h"
#include "philox.h"
#include "program_eval.h"
#include "storage.h"

namespace ebm {
namespace cuda {

constexpr int THREADS = 256;
constexpr int GROUP = 4;  // elements per thread: one Philox group

// Four consecutive elements, loaded/stored with one 16-byte (fp32) or 8-byte (fp16/bf16) access.
template <class S>
struct alignas(GROUP * sizeof(S)) Pack {
  S v[GROUP];
};

// Elements [0, n) of the group at p; one vector access when VEC (aligned) and the group is full.
template <class T, bool VEC>
__device__ __forceinline__ void load_group(const typename T::storage* p, int n, float (&out)[GROUP],
                                           bool (&bad)[GROUP]) {
  using S = typename T::storage;
  S raw[GROUP];
  if (VEC && n == GROUP) {
    const Pack<S> pk = *reinterpret_cast<const Pack<S>*>(p);
#pragma unroll
    for (int k = 0; k < GROUP; ++k) raw[k] = pk.v[k];
  } else {
#pragma unroll
    for (int k = 0; k < GROUP; ++k) raw[k] = k < n ? p[k] : S(0);
  }
#pragma unroll
  for (int k = 0; k < GROUP; ++k) {
    out[k] = T::load(raw[k]);
    bad[k] = T::nonfinite(raw[k]);
  }
}

// Element r (0..7) of the pair of Philox groups (a, b), without local-memory indexing.
__device__ __forceinline__ float pick8(int r, const float (&a)[GROUP], const float (&b)[GROUP]) {
  float v = b[3];
#pragma unroll
  for (int k = 6; k >= 0; --k) v = r == k ? (k < GROUP ? a[k] : b[k - GROUP]) : v;
  return v;
}

// xi(seed, step, j) for j = j0 .. j0 + n - 1 (n <= 4): one Philox call when j0 % 4 == 0, else two.
__device__ __forceinline__ void noise_group(uint64_t seed, uint64_t step, uint64_t j0, int n,
                                            float (&xi)[GROUP]) {
  const uint64_t q0 = j0 >> 2;
  const int r0 = static_cast<int>(j0 & 3u);
  float a[GROUP], b[GROUP] = {0.0f, 0.0f, 0.0f, 0.0f};
  normal4(seed, step, q0, a[0], a[1], a[2], a[3]);
  if (r0 == 0) {
#pragma unroll
    for (int k = 0; k < GROUP; ++k) xi[k] = a[k];
    return;
  }
  if (r0 + n > GROUP) normal4(seed, step, q0 + 1, b[0], b[1], b[2], b[3]);
#pragma unroll
  for (int k = 0; k < GROUP; ++k) xi[k] = pick8(r0 + k, a, b);
}

__device__ __forceinline__ uint32_t warp_or(uint32_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// blockDim = (tx, THREADS / tx); grid = row_blocks * chunks blocks; dynamic shared memory
// (M * 5 + rows * N) floats. Every thread reaches the __syncthreads and the warp reductions (no
// early return).
template <class T, bool VEC>
__global__ void __launch_bounds__(THREADS) langevin_step_kernel(const StepArgs a, int64_t chunks) {
  using S = typename T::storage;
  extern __shared__ float smem[];
  const int M = a.M, N = a.N;
  const int rows = blockDim.y;
  float* s_table = smem;                   // [M, 5]
  float* s_w = smem + M * TABLE_COLUMNS;   // [rows, N]: leaf energies, then (phase B) weights

  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t row_block = blockIdx.x / chunks;
  const int64_t chunk = blockIdx.x - row_block * chunks;
  const int64_t b = row_block * rows + threadIdx.y;
  const bool row_ok = b < a.B;
  const int64_t d = (chunk * blockDim.x + threadIdx.x) * GROUP;
  const int64_t left = a.D - d;
  const int n = row_ok && left > 0 ? static_cast<int>(left < GROUP ? left : GROUP) : 0;

  // ---- A: shared inputs; this thread's x and noise ------------------------------------------------
  for (int i = tid; i < M * TABLE_COLUMNS; i += THREADS) s_table[i] = a.table[i];
  for (int i = tid; i < rows * N; i += THREADS) {
    const int r = i / N;
    const int leaf = i - r * N;
    const int64_t bb = row_block * rows + r;
    s_w[i] = bb < a.B ? a.e[leaf * a.B + bb] : 0.0f;
  }
  float xv[GROUP] = {0.0f, 0.0f, 0.0f, 0.0f};
  float xi[GROUP] = {0.0f, 0.0f, 0.0f, 0.0f};
  const float sigma = a.noise_ptr ? *a.noise_ptr : a.noise;
  if (n > 0) {
    bool unused[GROUP];
    load_group<T, VEC>(static_cast<const S*>(a.x) + b * a.x_stride + d, n, xv, unused);
    if (sigma != 0.0f) {  // uniform over the grid; sigma = 0 skips the RNG (sigma * xi = 0)
      const uint64_t seed = a.seed_ptr ? static_cast<uint64_t>(*a.seed_ptr) : a.seed;
      const uint64_t step = static_cast<uint64_t>(a.step_ptr ? *a.step_ptr : a.step);
      noise_group(seed, step, static_cast<uint64_t>(b * a.D + d), n, xi);
    }
  }
  __syncthreads();

  // ---- B: weights, once per (block, sample) ---------------------------------------------------------
  if (threadIdx.x == 0 && row_ok) {
    float* wr = s_w + threadIdx.y * N;
    uint32_t bad_energy = 0;
    for (int i = 0; i < N; ++i) {
      if (!isfinite(wr[i])) bad_energy |= 1u << i;
    }
    float energy;
    eval_program<1>(s_table, M, N, wr, 1, 1, wr, 0, &energy);  // in place: energies -> weights
    if (chunk == 0) {
      a.energy_out[b] = energy;
      if (bad_energy) atomicOr(a.flag, static_cast<int>(bad_energy));
    }
  }
  __syncthreads();

  // ---- C: weighted gradient, update, store ----------------------------------------------------------
  uint32_t bad_leaf = 0, bad_state = 0;
  if (n > 0) {
    const float* wr = s_w + threadIdx.y * N;
    const S* gp = static_cast<const S*>(a.g) + b * a.g_stride_b + d;
    float g[GROUP] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4  // up to four leaves' loads in flight per thread
    for (int i = 0; i < N; ++i) {
      float gv[GROUP];
      bool bad[GROUP];
      load_group<T, VEC>(gp + i * a.g_stride_n, n, gv, bad);
      const float wi = wr[i];
#pragma unroll
      for (int k = 0; k < GROUP; ++k) {
        g[k] += wi * gv[k];
        if (bad[k]) bad_leaf |= 1u << i;
      }
    }
    const float eta = a.step_size_ptr ? *a.step_size_ptr : a.step_size;
    const float clip = a.has_clip ? a.grad_clip : INFINITY;
    const float lo = a.has_clamp ? a.lo : -INFINITY;
    const float hi = a.has_clamp ? a.hi : INFINITY;
    const bool noise_first = a.order == ORDER_NOISE_FIRST;
    Pack<S> res;
#pragma unroll
    for (int k = 0; k < GROUP; ++k) {
      const float gk = clampf(g[k], -clip, clip);
      const float moved = xv[k] - eta * gk;
      const float nz = sigma * xi[k];
      const float nv = noise_first ? clampf(moved, lo, hi) + nz : clampf(moved + nz, lo, hi);
      res.v[k] = T::store(nv);
      if (k < n && T::nonfinite(res.v[k])) bad_state = 1;
    }
    S* op = static_cast<S*>(a.out) + b * a.out_stride + d;
    if (VEC && n == GROUP) {
      *reinterpret_cast<Pack<S>*>(op) = res;
    } else {
#pragma unroll
      for (int k = 0; k < GROUP; ++k) {
        if (k < n) op[k] = res.v[k];
      }
    }
  }
  bad_leaf = warp_or(bad_leaf);
  bad_state = warp_or(bad_state);
  if ((tid & 31) == 0) {
    if (bad_leaf) atomicOr(a.flag, static_cast<int>(bad_leaf));
    if (bad_state) atomicOr(a.flag + 1, 1);
  }
}

}  // namespace cuda
}  // namespace ebm
