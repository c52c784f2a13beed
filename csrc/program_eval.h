// Per-sample evaluation of a composed expression's program table (ebm_fast/program.py), shared by
// the CPU and the CUDA kernels.
//
// The table is float32 [M, 5], rows in post-order (children before parents, root last):
//   kind (0 LEAF, 1 SUM, 2 LSE), leaf index, parent row (-1 for the root), edge (c_j under a SUM,
//   b_j under an LSE), temperature T (of an LSE row).
// Forward over the rows: a LEAF reads E[leaf], a SUM finishes its running sum, an LSE its online
// log-sum-exp; each node then pushes into its parent's accumulator. Backward in reverse: the root's
// adjoint is 1, a child's is the parent's times c_k (SUM) or exp((e_parent - e_k)/T + b_k) (LSE);
// a LEAF's adjoint is its weight w_i. Each step mirrors Program.weights_and_energy operation for
// operation (same order, same NaN propagation), so the backends agree with the reference to an ulp.
#pragma once

#include <math.h>
#include <stdint.h>

#include "philox.h"  // EBM_HD

namespace ebm {

constexpr int MAX_NODES = 64;   // ebm_fast.program.MAX_NODES
constexpr int MAX_LEAVES = 32;  // ebm_fast.program.MAX_LEAVES
constexpr int TABLE_COLUMNS = 5;
enum : int { NODE_LEAF = 0, NODE_SUM = 1, NODE_LSE = 2 };

// torch.maximum: NaN if either is NaN.
EBM_HD float nan_max(float a, float b) {
  if (a != a) return a;
  if (b != b) return b;
  return a > b ? a : b;
}

// Leaf weights w[0..N) and the root energy of one sample.
//   table   float [M, 5] (M in [1, MAX_NODES])
//   energy  leaf i's energy is energy[i * energy_stride] (i < N <= MAX_LEAVES)
//   w       out: leaf weights; may be the same memory as `energy` with energy_stride 1 (every leaf
//           is read in the forward pass before any weight is written in the backward pass)
// A malformed table (parent not after its child, leaf index out of range) cannot read or write out
// of bounds: such edges are dropped, and leaves that never occur get weight 0.
EBM_HD float eval_program(const float* table, int M, int N, const float* energy, int64_t energy_stride,
                          float* w) {
  float e[MAX_NODES];    // node energies
  float acc[MAX_NODES];  // SUM: running sum; LSE: running max; then (backward) adjoints
  float s[MAX_NODES];    // LSE: running sum of exp(z - max)
  uint64_t started = 0;   // bit k: node k has received its first child

  for (int k = 0; k < M; ++k) {
    const float* row = table + k * TABLE_COLUMNS;
    const int kind = static_cast<int>(row[0]);
    float ek;
    if (kind == NODE_LEAF) {
      const int leaf = static_cast<int>(row[1]);
      ek = (leaf >= 0 && leaf < N) ? energy[leaf * energy_stride] : 0.0f;
    } else if (kind == NODE_SUM) {
      ek = acc[k];
    } else {
      ek = -row[4] * (acc[k] + logf(s[k]));
    }
    e[k] = ek;
    const int parent = static_cast<int>(row[2]);
    if (parent <= k || parent >= M) continue;  // the root (parent -1), or a malformed edge
    const float* prow = table + parent * TABLE_COLUMNS;
    const float edge = row[3];
    if (static_cast<int>(prow[0]) == NODE_SUM) {
      const float term = edge * ek;
      acc[parent] = ((started >> parent) & 1u) ? acc[parent] + term : term;
    } else {
      const float z = -ek / prow[4] + edge;
      if (!((started >> parent) & 1u)) {
        acc[parent] = z;
        s[parent] = 1.0f;
      } else {
        const float mx = nan_max(acc[parent], z);
        s[parent] = s[parent] * expf(acc[parent] - mx) + expf(z - mx);
        acc[parent] = mx;
      }
    }
    started |= uint64_t{1} << parent;
  }

  // Backward: acc now holds adjoints (a parent's adjoint is final before its children are reached).
  uint32_t seen = 0;
  for (int k = M - 1; k >= 0; --k) {
    const float* row = table + k * TABLE_COLUMNS;
    const int parent = static_cast<int>(row[2]);
    float adj;
    if (k == M - 1) {
      adj = 1.0f;
    } else if (parent <= k || parent >= M) {
      adj = 0.0f;
    } else {
      const float* prow = table + parent * TABLE_COLUMNS;
      adj = static_cast<int>(prow[0]) == NODE_SUM
                ? acc[parent] * row[3]
                : acc[parent] * expf((e[parent] - e[k]) / prow[4] + row[3]);
    }
    acc[k] = adj;
    if (static_cast<int>(row[0]) == NODE_LEAF) {
      const int leaf = static_cast<int>(row[1]);
      if (leaf >= 0 && leaf < N) {
        w[leaf] = adj;
        seen |= 1u << leaf;
      }
    }
  }
  for (int i = 0; i < N; ++i) {
    if (!((seen >> i) & 1u)) w[i] = 0.0f;
  }
  return e[M - 1];
}

}  // namespace ebm
