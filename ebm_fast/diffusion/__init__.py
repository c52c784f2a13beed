"""Energy-parameterized diffusion models: trained by denoising score matching, composed at every
noise level with the ebm_fast algebra, sampled by annealed Langevin dynamics.

* :class:`VPSchedule` -- the noise schedule (``alpha_t``, ``sigma_t``, levels).
* :class:`EnergyUNet` -- ``E(x, t, c) = ||x - alpha_t D(x, t, c)||^2 / (2 sigma_t^2)``, the
  noise level held in a buffer so that ``Concept(model, cond)`` works unchanged;
  :class:`CondSpec` packs conditions.
* :func:`dsm_loss`, :class:`DSMTrainer`, :func:`export_model`, :func:`load_model` -- training.
* :func:`sample_annealed` -- the reverse process with Langevin correctors of the composed energy.
* :func:`concept`, :func:`conjunction`, :func:`disjunction` -- composition rules for diffusion
  concepts (product over the unconditional, negation, calibrated mixtures).
"""

from .compose import CalibratedDisjunction, concept, conjunction, disjunction, log_partition_ratios, unconditional
from .network import CondSpec, EnergyMLP, EnergyUNet, GaussianEnergy, TimeEnergy, spatial_maps
from .schedule import VPSchedule
from .sampling import sample_annealed
from .training import DSMTrainer, build_model, dsm_loss, export_model, load_model, warm_start

__all__ = ["VPSchedule", "CondSpec", "TimeEnergy", "EnergyUNet", "EnergyMLP", "GaussianEnergy", "dsm_loss",
           "DSMTrainer", "build_model", "warm_start", "spatial_maps",
           "export_model", "load_model", "sample_annealed", "concept", "unconditional", "conjunction", "disjunction",
           "CalibratedDisjunction", "log_partition_ratios"]
