// The fused MALA/HMC operations on host memory (contract: ebm_fast/mcmc_reference.py). OpenMP over
// chains: each chain evaluates its program once (program_eval.h), then runs the row pieces of
// mcmc_step.h over its D elements.
#include "mcmc_step.h"
#include "program_eval.h"

namespace ebm {
namespace {

// Leaf weights w[0..N) and the composed energy of chain b.
float chain_weights(const MCMCArgs& a, int64_t b, float* w) {
  float root = 0.0f;
  eval_program<1>(a.table, a.M, a.N, a.e + b, a.B, 1, w, 1, &root);
  return root;
}

}  // namespace

void mcmc_move_cpu(const MCMCArgs& a) {
  const uint64_t seed = seed_of(a), step = step_of(a);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < a.B; ++b) {
    float w[MAX_LEAVES];
    a.energy[b] = chain_weights(a, b, w);
    for (int64_t d = 0; d < a.D; ++d) move_at(a, w, b, d, seed, step);
  }
}

void mcmc_accept_cpu(const MCMCArgs& a) {
  const uint64_t seed = seed_of(a), step = step_of(a);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < a.B; ++b) {
    float w[MAX_LEAVES];
    const float e_new = chain_weights(a, b, w);
    float forward = 0.0f, reverse = 0.0f;
    for (int64_t d = 0; d < a.D; ++d) accept_terms_at(a, w, b, d, seed, step, forward, reverse);
    if (!decide(a, b, e_new, forward, reverse, seed, step)) continue;
    for (int i = 0; i < a.N; ++i) a.e_state[i * a.B + b] = a.e[i * a.B + b];
    for (int64_t d = 0; d < a.D; ++d) take_proposal_at(a, b, d);
  }
}

}  // namespace ebm
