// The fused MALA/HMC operations (ebm_fast/mcmc_reference.py is the contract): their argument
// struct, the per-element arithmetic shared by the CPU and CUDA kernels, and the entry points.
//
// MCMCArgs is bound once in ext.cpp (ebm_fast._C.MCMCArgs) and filled by ebm_fast/_native.py
// (`mcmc_args`); the same struct drives both operations:
//   move:   x, out, g, e -> out (and momentum, energy)      phase PHASE_MALA / PHASE_HMC_FIRST / PHASE_HMC
//   accept: x, out (the proposal), g/e (the proposal's leaves), g_state/e_state/energy (the chain's,
//           overwritten in accepted rows), momentum (HMC), accept_out, alpha_out
#pragma once

#include <math.h>
#include <stdint.h>

#include "langevin_step.h"  // MAX_NODES, MAX_LEAVES
#include "philox.h"

namespace ebm {

enum MCMCPhase : int { PHASE_MALA = 0, PHASE_HMC_FIRST = 1, PHASE_HMC = 2 };  // mcmc_reference.PHASE_*
enum MCMCMethod : int { METHOD_MALA = 0, METHOD_HMC = 1 };                   // mcmc_reference.METHODS
constexpr uint32_t ACCEPT_TAG = 0x80000000u;                                  // mcmc_reference.ACCEPT_TAG

struct MCMCArgs {
  // ---- tensors: float32, contiguous ----
  float* x = nullptr;            // [B, D] the chain's state (accept: overwritten in accepted rows)
  float* out = nullptr;          // [B, D] move: the new point (may be x); accept: the proposal
  const float* g = nullptr;      // [N, B, D] leaf gradients (move: at x; accept: at the proposal)
  const float* e = nullptr;      // [N, B] leaf energies, likewise
  float* g_state = nullptr;      // accept: [N, B, D] the chain's leaf gradients
  float* e_state = nullptr;      // accept: [N, B] the chain's leaf energies
  const float* table = nullptr;  // [M, TABLE_COLUMNS] program table
  int M = 0, N = 0;
  int64_t B = 0, D = 0;
  const float* step_size = nullptr;  // [B] per-chain eps
  const float* inv_mass = nullptr;   // [D] diagonal of M^-1, or null (identity)
  float* momentum = nullptr;         // [B, D] HMC momentum, or null (MALA)
  float* energy = nullptr;           // [B] move: composed energy at x (written); accept: read, then written
  float* accept_out = nullptr;       // [B] accept: 1 or 0
  float* alpha_out = nullptr;        // [B] accept: min(1, exp(log a)), 0 when log a is not finite
  float temperature = 1.0f;
  // ---- RNG state as (pointer, value), as in StepArgs ----
  const int64_t* seed_ptr = nullptr;
  uint64_t seed = 0;
  const int64_t* step_ptr = nullptr;
  int64_t step = 0;
  int phase = PHASE_MALA;
  int method = METHOD_MALA;
};

// xi(seed, step, j) (docs/contract.md §4): lane j % 4 of the Philox group j / 4.
EBM_HD float normal_at(uint64_t seed, uint64_t step, uint64_t j) {
  float n[4];
  normal4(seed, step, j >> 2, n[0], n[1], n[2], n[3]);
  return n[j & 3];
}

// The accept uniform of chain b at `step` (docs/mcmc.md): r0 of Philox(seed, (b, step ^ tag << 32)).
EBM_HD float accept_uniform(uint64_t seed, uint64_t step, uint64_t b) {
  uint32_t c0 = static_cast<uint32_t>(b), c1 = static_cast<uint32_t>(b >> 32);
  uint32_t c2 = static_cast<uint32_t>(step), c3 = static_cast<uint32_t>(step >> 32) ^ ACCEPT_TAG;
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return uint_to_uniform(c0);
}

// One element of the move: returns the new position; updates the momentum (HMC phases).
//   xi is read only by phases PHASE_MALA and PHASE_HMC_FIRST; im is m^-1 of the element (1 without mass).
EBM_HD float move_element(int phase, float x, float g, float eps, float temperature, float xi, float im,
                          bool has_mass, float* p) {
  if (phase == PHASE_MALA) return x - eps * g + sqrtf(eps * (2.0f * temperature)) * xi;
  float mom;
  if (phase == PHASE_HMC_FIRST) {
    const float p0 = has_mass ? xi / sqrtf(im) : xi;
    mom = p0 - (0.5f * eps / temperature) * g;
  } else {
    mom = *p - (eps / temperature) * g;
  }
  *p = mom;
  return x + eps * (has_mass ? mom * im : mom);
}

// The reverse term's summand of one element (before the row's final scaling, see accept_decision).
EBM_HD float reverse_element(int method, float x, float prop, float g, float eps, float temperature, float p,
                             float im, bool has_mass) {
  if (method == METHOD_MALA) {
    const float r = x - prop + eps * g;
    return r * r;
  }
  const float pf = p - (0.5f * eps / temperature) * g;
  const float k = pf * pf;
  return has_mass ? k * im : k;
}

// The decision of one chain from its row sums: returns accepted; writes alpha.
EBM_HD bool accept_decision(int method, float e_old, float e_new, float forward_sq, float reverse_sum, float eps,
                            float temperature, float u, float* alpha) {
  const float reverse = method == METHOD_MALA ? reverse_sum / (eps * (4.0f * temperature)) : 0.5f * reverse_sum;
  const float log_alpha = (e_old - e_new) / temperature + 0.5f * forward_sq - reverse;
  const bool finite = fabsf(log_alpha) < INFINITY;
  const float a = finite ? expf(fminf(log_alpha, 0.0f)) : 0.0f;
  *alpha = a;
  return finite && u < a;
}

// ---- the per-element and per-chain pieces both kernels run (CPU: a loop over d; CUDA: threads) ----
EBM_HD uint64_t seed_of(const MCMCArgs& a) { return a.seed_ptr ? static_cast<uint64_t>(*a.seed_ptr) : a.seed; }
EBM_HD uint64_t step_of(const MCMCArgs& a) { return static_cast<uint64_t>(a.step_ptr ? *a.step_ptr : a.step); }

// g = sum_i w_i G_i at element (b, d); w: the chain's leaf weights.
EBM_HD float composed_grad(const MCMCArgs& a, const float* w, int64_t b, int64_t d) {
  float g = 0.0f;
  for (int i = 0; i < a.N; ++i) g += w[i] * a.g[(i * a.B + b) * a.D + d];
  return g;
}

// The move of element (b, d): writes out (and the momentum in the HMC phases).
EBM_HD void move_at(const MCMCArgs& a, const float* w, int64_t b, int64_t d, uint64_t seed, uint64_t step) {
  const int64_t j = b * a.D + d;
  const bool has_mass = a.inv_mass != nullptr;
  const float xi = a.phase == PHASE_HMC ? 0.0f : normal_at(seed, step, static_cast<uint64_t>(j));
  float* p = a.momentum != nullptr ? a.momentum + j : nullptr;
  a.out[j] = move_element(a.phase, a.x[j], composed_grad(a, w, b, d), a.step_size[b], a.temperature, xi,
                          has_mass ? a.inv_mass[d] : 1.0f, has_mass, p);
}

// The accept's row sums, element (b, d)'s share: forward += xi^2, reverse += its reverse summand.
EBM_HD void accept_terms_at(const MCMCArgs& a, const float* w, int64_t b, int64_t d, uint64_t seed, uint64_t step,
                            float& forward, float& reverse) {
  const int64_t j = b * a.D + d;
  const bool has_mass = a.inv_mass != nullptr;
  const float xi = normal_at(seed, step, static_cast<uint64_t>(j));
  forward += xi * xi;
  const float p = a.momentum != nullptr ? a.momentum[j] : 0.0f;
  reverse += reverse_element(a.method, a.x[j], a.out[j], composed_grad(a, w, b, d), a.step_size[b], a.temperature,
                             p, has_mass ? a.inv_mass[d] : 1.0f, has_mass);
}

// Chain b's decision from its row sums: writes alpha_out, accept_out and (accepted) the energy.
EBM_HD bool decide(const MCMCArgs& a, int64_t b, float e_new, float forward, float reverse, uint64_t seed,
                   uint64_t step) {
  float alpha = 0.0f;
  const bool acc = accept_decision(a.method, a.energy[b], e_new, forward, reverse, a.step_size[b], a.temperature,
                                   accept_uniform(seed, step, static_cast<uint64_t>(b)), &alpha);
  a.alpha_out[b] = alpha;
  a.accept_out[b] = acc ? 1.0f : 0.0f;
  if (acc) a.energy[b] = e_new;
  return acc;
}

// An accepted chain b takes the proposal's element d: its state and every leaf's gradient.
EBM_HD void take_proposal_at(const MCMCArgs& a, int64_t b, int64_t d) {
  a.x[b * a.D + d] = a.out[b * a.D + d];
  for (int i = 0; i < a.N; ++i) a.g_state[(i * a.B + b) * a.D + d] = a.g[(i * a.B + b) * a.D + d];
}

// Host memory; blocks until done. OpenMP over chains.
void mcmc_move_cpu(const MCMCArgs& a);
void mcmc_accept_cpu(const MCMCArgs& a);

#if defined(EBM_FAST_WITH_CUDA)
// Device memory; enqueued on `stream` (a cudaStream_t as an integer), asynchronous.
void mcmc_move_cuda(const MCMCArgs& a, uintptr_t stream);
void mcmc_accept_cuda(const MCMCArgs& a, uintptr_t stream);
#endif

}  // namespace ebm
