// Per-sample evaluation of a composed expression's program table (ebm_fast/program.py), the one C++
// source shared by the CPU kernel (LANES = 16 samples per call, vectorised across the lanes) and the
// CUDA kernel (LANES = 1, one thread per sample).
//
// The table is float32 [M, TABLE_COLUMNS], rows in post-order (children before parents, root last):
//   kind (NODE_LEAF, NODE_SUM, NODE_LSE), leaf index, parent row (-1 for the root), edge (c_j under
//   a SUM, b_j under an LSE), temperature T (of an LSE row).
// Forward over the rows: a LEAF reads E[leaf], a SUM finishes its running sum, an LSE its online
// log-sum-exp; each node then pushes into its parent's accumulator. Backward in reverse: the root's
// adjoint is 1, a child's is the parent's times c_k (SUM) or exp((e_parent - e_k)/T + b_k) (LSE);
// a LEAF's adjoint is its weight w_i. Each step mirrors Program.weights_and_energy operation for
// operation (same order, same NaN propagation), so the backends agree with the reference to an ulp
// (up to FMA contraction in the CPU kernel's AVX2/AVX-512 clones).
#pragma once

#include <math.h>
#include <stdint.h>

#include "langevin_step.h"  // MAX_NODES, MAX_LEAVES, TABLE_COLUMNS, NODE_*
#include "philox.h"         // EBM_HD

// `omp simd` on the host loops over lanes; nothing on the device, where LANES is 1.
#if defined(__CUDA_ARCH__) || !defined(_OPENMP)
#define EBM_SIMD
#else
#define EBM_SIMD _Pragma("omp simd")
#endif

namespace ebm {

// torch.maximum: NaN if either is NaN.
EBM_HD float nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

// Leaf weights and root energies of `nl` <= LANES samples (lanes).
//   table      float [M, TABLE_COLUMNS], M in [1, MAX_NODES]
//   energy     leaf i's energy in lane l is energy[i * leaf_stride + l] (i < N <= MAX_LEAVES)
//   w          out: leaf i's weight in lane l goes to w[l * lane_stride + i]. May be the same memory
//              as `energy` (the CUDA kernel evaluates in place in shared memory): every leaf is read
//              in the forward pass before any weight is written in the backward pass.
//   root       out: root[l], the composed energy of lane l
// A malformed table (parent not after its child, leaf index out of range) cannot read or write out
// of bounds: such edges are dropped, and leaves that never occur get weight 0.
template <int LANES>
EBM_HD void eval_program(const float* table, int M, int N, const float* energy, int64_t leaf_stride, int nl,
                         float* w, int64_t lane_stride, float* root) {
  float e[MAX_NODES][LANES];    // node energies
  float acc[MAX_NODES][LANES];  // SUM: running sum; LSE: running max; then (backward) adjoints
  float s[MAX_NODES][LANES];    // LSE: running sum of exp(z - max)
  uint64_t started = 0;         // bit k: node k has received its first child

  for (int k = 0; k < M; ++k) {
    const float* row = table + k * TABLE_COLUMNS;
    const int kind = static_cast<int>(row[0]);
    float* ek = e[k];
    if (kind == NODE_LEAF) {
      const int leaf = static_cast<int>(row[1]);
      const float* src = (leaf >= 0 && leaf < N) ? energy + leaf * leaf_stride : nullptr;
      EBM_SIMD
      for (int l = 0; l < LANES; ++l) ek[l] = (src != nullptr && l < nl) ? src[l] : 0.0f;
    } else if (kind == NODE_SUM) {
      EBM_SIMD
      for (int l = 0; l < LANES; ++l) ek[l] = acc[k][l];
    } else {
      const float t = row[4];
      for (int l = 0; l < LANES; ++l) ek[l] = -t * (acc[k][l] + logf(s[k][l]));
    }
    const int parent = static_cast<int>(row[2]);
    if (parent <= k || parent >= M) continue;  // the root (parent -1), or a malformed edge
    const float* prow = table + parent * TABLE_COLUMNS;
    const float edge = row[3];
    float* ap = acc[parent];
    const bool first = !((started >> parent) & 1u);
    if (static_cast<int>(prow[0]) == NODE_SUM) {
      if (first) {
        EBM_SIMD
        for (int l = 0; l < LANES; ++l) ap[l] = edge * ek[l];
      } else {
        EBM_SIMD
        for (int l = 0; l < LANES; ++l) ap[l] = ap[l] + edge * ek[l];
      }
    } else {
      const float tp = prow[4];
      float* sp = s[parent];
      if (first) {
        EBM_SIMD
        for (int l = 0; l < LANES; ++l) {
          ap[l] = -ek[l] / tp + edge;
          sp[l] = 1.0f;
        }
      } else {
        for (int l = 0; l < LANES; ++l) {
          const float z = -ek[l] / tp + edge;
          const float mx = nan_max(ap[l], z);
          sp[l] = sp[l] * expf(ap[l] - mx) + expf(z - mx);
          ap[l] = mx;
        }
      }
    }
    started |= uint64_t{1} << parent;
  }

  // Backward: acc now holds adjoints (a parent's adjoint is final before its children are reached).
  uint32_t seen = 0;
  for (int k = M - 1; k >= 0; --k) {
    const float* row = table + k * TABLE_COLUMNS;
    const int parent = static_cast<int>(row[2]);
    float* adj = acc[k];
    if (k == M - 1 || parent <= k || parent >= M) {
      const float v = k == M - 1 ? 1.0f : 0.0f;
      EBM_SIMD
      for (int l = 0; l < LANES; ++l) adj[l] = v;
    } else {
      const float* prow = table + parent * TABLE_COLUMNS;
      const float* ap = acc[parent];
      const float edge = row[3];
      if (static_cast<int>(prow[0]) == NODE_SUM) {
        EBM_SIMD
        for (int l = 0; l < LANES; ++l) adj[l] = ap[l] * edge;
      } else {
        const float tp = prow[4];
        const float* ep = e[parent];
        const float* ek = e[k];
        for (int l = 0; l < LANES; ++l) adj[l] = ap[l] * expf((ep[l] - ek[l]) / tp + edge);
      }
    }
    if (static_cast<int>(row[0]) == NODE_LEAF) {
      const int leaf = static_cast<int>(row[1]);
      if (leaf >= 0 && leaf < N) {
        for (int l = 0; l < nl; ++l) w[l * lane_stride + leaf] = adj[l];
        seen |= 1u << leaf;
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    if (!((seen >> i) & 1u)) {
      for (int l = 0; l < nl; ++l) w[l * lane_stride + i] = 0.0f;
    }
  }
  for (int l = 0; l < nl; ++l) root[l] = e[M - 1][l];
}

}  // namespace ebm
