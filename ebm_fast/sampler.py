"""Composed Langevin chains: :func:`sample` (a composed expression) and :func:`langevin` (any energy).

A chain is three small parts:

* :class:`~ebm_fast.langevin_chain.Chain` -- what carries between steps: the state ``x`` (updated in
  place), the RNG state ``(seed, step)``, the step-size/noise schedule, the non-finite flag and the
  composed energy;
* :meth:`~ebm_fast.langevin_chain.Chain.step` -- one update in place: the leaves' energies and
  input-gradients (:class:`~ebm_fast.leaf_eval.LeafEvaluator`), then the one fused step
  (:func:`ebm_fast.ops.prepare_step`, validated once per chain);
* the driver (:func:`~ebm_fast.langevin_chain.drive`) -- a Python loop, or replays of a captured
  CUDA graph of ``S`` steps (:mod:`ebm_fast.graphs`).

:func:`sample` and :func:`langevin` check their arguments, build a chain and drive it; the MALA and
HMC methods hand over to :mod:`ebm_fast.mcmc`.

Step indices (the ``step`` of the RNG, docs/contract.md §4). Update ``k = 1..K`` draws ``xi(seed, k)``; index 0
is the initial noise of ``noise_first``. With ``eta_i``, ``sigma_i`` the schedules' entries
``i = 0..K-1``:

* ``order="ula"``: ``x_k = clamp(x_{k-1} - eta_{k-1} g(x_{k-1}) + sigma_{k-1} xi(seed, k))``.
* ``order="noise_first"`` (the released code, whose loop is, for ``i = 0..K-1``,
  ``x = x + sigma_i randn; x = clamp(x - eta_i grad E(x))``): ``x_0' = x_0 + sigma_0 xi(seed, 0)``,
  then fused steps ``x_k' = clamp(x_{k-1}' - eta_{k-1} g(x_{k-1}')) + sigma_k xi(seed, k)`` with
  ``sigma_K = 0``: the released loop exactly, its iteration ``i`` drawing ``xi(seed, i)`` as noise
  (and the chain's last step adding none, docs/contract.md §3).

Scalars live on the host for CPU chains (Python numbers: nothing to synchronise) and in device memory
elsewhere (``[2, S]`` window of the schedule plus an int64 counter that each step advances on the
device), so a CUDA chain never waits on the host and its steps can be captured in a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import graphs, ops
from .compose import Concept, Expr, Negated
from .leaf_eval import LeafEvaluator
from .model_state import frozen_parameters, inspect_model
from .autograd_tail import autograd_steps
from .chain_setup import check_int, graph_key, graph_plan, graphed_chain, replay_lengths
from .langevin_chain import Chain, drive, nonfinite_message, schedule, schedule_by_step
from .rng import draw_seed
from .schedules import noise_from_scale

__all__ = ["sample", "langevin", "SampleInfo", "Chain", "ON_NONFINITE"]

ON_NONFINITE = ("raise", "reinit")


@dataclass
class SampleInfo:
    """Diagnostics of one call (``return_info=True``).

    Attributes:
        seed: the chain's seed (drawn from torch's default generator when ``seed=None``).
        steps: K.
        backend: the fused step's backend.
        graph: ``"captured"`` (graphs captured in this call, then replayed), ``"replayed"`` (cached
            graphs), or ``"eager"`` / ``"eager: <why not graphed>"``.
        grouping: ``(leaf indices, "batched" | "per_leaf")`` per group of leaves sharing a model.
        workers: threads that ran a step's model passes at once (1 on CUDA, when compiled, with
            a single pass per step, or when a model is stateful: :func:`ebm_fast.model_state.stateful_parts`).
        reinitialized: chains re-initialised because their state became non-finite
            (``on_nonfinite="reinit"``).
        nonfinite_leaves: reprs of the leaves that met a non-finite energy or gradient.
        nonfinite_state: whether some state became non-finite.
        warnings: the warnings this call raised.
        grad_norms: float32 ``[K, B]``, the L2 norm of each chain's composed (clipped) gradient at
            update k (row k-1), with ``grad_norms=True``; else None.
    """

    seed: int
    steps: int
    backend: str
    graph: str
    grouping: list
    workers: int = 1
    reinitialized: int = 0
    nonfinite_leaves: list = field(default_factory=list)
    nonfinite_state: bool = False
    warnings: list = field(default_factory=list)
    grad_norms: Tensor | None = None


# ---- argument checks --------------------------------------------------------------------------
# ---- public API --------------------------------------------------------------------------------
def sample(expr: Expr, x0: Tensor, *, steps: int, step_size, noise=None,
           clamp: tuple[float, float] | None = None,
           grad_clip: float | None = None, order: str = "noise_first", seed: int | None = None,
           backend: str = "auto", graph: bool | str = "auto", grouping: str = "auto",
           memory_format: str = "auto", compile: bool | dict = False, autocast: torch.dtype | None = None,
           workers: int | None = None, on_nonfinite: str = "raise", init: Callable[[int], Tensor] | None = None,
           return_energies: bool = False, trajectory: bool = False, every: int = 1, return_info: bool = False,
           graph_steps: int = graphs.DEFAULT_GRAPH_STEPS, method: str = "ula", temperature: float = 1.0,
           leapfrog_steps: int | None = None, mass=None, adapt=None, differentiable: int = 0,
           grad_norms: bool = False):
    """K steps of Langevin dynamics on a composed energy, from ``x0``.

    Args:
        expr: the composed expression (``Concept`` s combined with ``&``, ``|``, ``~``, ``*``).
        x0: initial states ``[B, ...]`` (e.g. images ``[B, C, H, W]``), float32/float16/bfloat16/float64.
            The models are called with tensors of x0's dtype; the chain's arithmetic is fp32 (fp64
            states are stepped in fp32).
        steps: K >= 0.
        step_size: ``eta``: a number, or a schedule of K numbers (sequence or 1-D tensor; entry i is
            used by the i-th update, ``i = 0..K-1``), a callable ``i -> eta_i``, or a scheduler object
            with ``get_value()`` / ``step()`` such as TorchEBM's (:mod:`ebm_fast.schedules`).
        noise: ``sigma``, the standard deviation of the noise added per update: likewise (the
            released code anneals it). TorchEBM's ``noise_scale`` is ``sigma / sqrt(2 eta)``
            (``ebm_fast.langevin(..., noise_scale=)`` converts).
        clamp: ``(lo, hi)`` applied by every step, or None (default: no clamp, as :func:`langevin`).
            The released image code clamps to ``(0, 1)``: pass ``clamp=(0.0, 1.0)``; JEM-style
            ``[-1, 1]`` images pass ``(-1.0, 1.0)`` or nothing. docs/conventions.md has the table.
        grad_clip: element-wise clip of the composed gradient, or None.
        order: ``"noise_first"`` (default: the released code's loop, reproduced exactly; see the
            module docstring) or ``"ula"``.
        seed: the RNG seed (docs/contract.md §4); None draws one from torch's default generator.
        backend: the fused step's backend (``"auto"``, ``"torch"``, ``"cpu"``, ``"cuda"``, ``"triton"``).
        graph: ``"auto"`` captures the chain in CUDA graphs when x0 is on a GPU and it is safe;
            True insists (ValueError when impossible); False runs eagerly. A failed capture warns
            once and runs eagerly.
        grouping: ``"auto"``, ``"batched"`` or ``"per_leaf"``: how leaves sharing a model are
            evaluated (:mod:`ebm_fast.leaf_eval`).
        memory_format: ``"auto"``, ``"contiguous"`` or ``"channels_last"``: the layout of image
            states handed to the models (auto: channels_last for conv models on the CPU, 1.44x faster
            there; :mod:`ebm_fast.leaf_eval`).
        compile: run each model group's energy + input-gradient under ``torch.compile`` (True or a
            dict of ``torch.compile`` options; compiling costs tens of seconds once per shape).
        autocast: None, ``torch.bfloat16`` or ``torch.float16``: the models' forward under autocast
            (state, gradients and the step stay in the state dtype / fp32).
        workers: on the CPU, how many of a step's independent model passes (leaves, ensemble members)
            run at once in threads: None (default) uses ``torch.get_num_threads()``, capped at the
            number of passes; 1 runs them one after another (:mod:`ebm_fast.leaf_eval`). The
            numbers do not depend on it beyond floating-point reassociation of ensemble gradients.
            A model with BatchNorm, spectral norm or dropout in training mode changes state on every
            forward: its passes always run one after another, in a fixed order.
        on_nonfinite: ``"raise"`` (default): ``FloatingPointError`` naming the leaf and the steps;
            ``"reinit"``: chains whose state became non-finite restart from ``init`` (checked every
            step on the CPU, every ``graph_steps`` steps on a GPU) and are counted in the info.
        init: ``init(n) -> Tensor [n, *x0.shape[1:]]``: fresh states for ``"reinit"`` (default:
            uniform in the clamp range, seeded by ``seed``).
        return_energies: also return the composed energies ``[K, B]`` (float32; entry k-1 at the
            point where update k took its gradient). Runs eagerly.
        trajectory: also return the states ``[K // every + 1, B, ...]`` at updates 0, every, 2 every,
            ... (update 0: the start, after noise_first's initial noise). Runs eagerly.
        every: the trajectory's stride.
        return_info: also return a :class:`SampleInfo`.
        graph_steps: ``S``, the steps per captured graph (and per non-finite check on a GPU).
        method: ``"ula"`` (default: the unadjusted Langevin chain described here), ``"mala"`` or
            ``"hmc"``: exact samplers of ``exp(-e/temperature)`` with a per-chain Metropolis accept
            (:func:`ebm_fast.mcmc.sample`; docs/mcmc.md). They take no ``noise`` (it follows from
            the step size), no ``clamp`` (leave it None: clamping breaks detailed balance), no
            ``grad_clip``, ``trajectory``, ``init`` or ``on_nonfinite="reinit"``; ``order`` is ignored.
        temperature, leapfrog_steps, mass, adapt: options of ``"mala"`` / ``"hmc"``
            (:func:`ebm_fast.mcmc.sample`).
        differentiable: ``n`` >= 0: the last ``n`` updates run in torch autograd with
            ``create_graph=True`` on the models as the caller left them, so the returned ``x`` carries
            a graph to the parameters (improved CD's KL term backpropagates through the final step;
            :mod:`ebm_fast.autograd_tail`). Same chain, same noise. Not with ``return_energies``,
            ``trajectory`` or ``grad_norms``.
        grad_norms: record the L2 norm of each chain's composed (clipped) gradient at every update in
            ``info.grad_norms`` ``[K, B]`` (needs ``return_info=True``; runs eagerly).

    Returns:
        ``x`` (x0's shape, dtype and device), or a tuple ``(x, energies?, trajectory?, info?)`` with
        the requested extras in that order.
    """
    if method != "ula" and (differentiable or grad_norms):
        raise ValueError("differentiable and grad_norms are options of the unadjusted method='ula'")
    if method != "ula":
        from . import mcmc

        mcmc.refuse_ula_options(method, noise=noise, clamp=clamp, grad_clip=grad_clip, trajectory=trajectory,
                                init=init, on_nonfinite=on_nonfinite)
        return mcmc.sample(expr, x0, method=method, steps=steps, step_size=step_size, temperature=temperature,
                           leapfrog_steps=leapfrog_steps, mass=mass, adapt=adapt, seed=seed, backend=backend,
                           graph=graph, grouping=grouping, memory_format=memory_format, compile=compile,
                           autocast=autocast, workers=workers, return_energies=return_energies,
                           return_info=return_info, graph_steps=graph_steps)
    if temperature != 1.0 or leapfrog_steps is not None or mass is not None or adapt is not None:
        raise ValueError("temperature, leapfrog_steps, mass and adapt are options of method='mala' / 'hmc', not of "
                         "the unadjusted method='ula'")
    if not isinstance(expr, Expr):
        raise TypeError(f"expr must be an ebm_fast expression (Concept, And, Or, Not, Scale), got "
                        f"{type(expr).__name__}")
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a Tensor of shape (B, ...), got {type(x0).__name__}")
    if x0.dtype not in ops.STATE_DTYPES:
        raise TypeError(f"x0 must have a floating dtype in {ops.STATE_DTYPES}, got {x0.dtype}")
    if x0.dim() < 2:
        raise ValueError(f"x0 must have shape (B, ...) with at least 2 dimensions (use x0[:, None] for "
                         f"scalar states), got shape {tuple(x0.shape)}")
    steps = check_int("steps", steps, 0)
    every = check_int("every", every, 1)
    graph_steps = check_int("graph_steps", graph_steps, 1)
    if not (isinstance(graph, bool) or (isinstance(graph, str) and graph == "auto")):
        raise ValueError(f"graph must be 'auto', True or False, got {graph!r}")
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
    if init is not None and not callable(init):
        raise TypeError(f"init must be a callable n -> Tensor [n, *x0.shape[1:]], got {type(init).__name__}")
    if on_nonfinite == "reinit" and init is None and clamp is None:
        raise ValueError("on_nonfinite='reinit' needs fresh states: pass clamp=(lo, hi) (uniform noise in "
                         "that range) or init=callable")
    device = x0.device
    stepper = ops.prepare_step(expr, device, order=order, grad_clip=grad_clip, clamp=clamp, backend=backend)
    if seed is None:
        seed = draw_seed()
    seed = ops.check_seed(seed)  # the rule of ops.langevin_step: an int in [0, 2**64)
    eta = schedule("step_size", step_size, steps, device)
    sigma = schedule("noise", noise, steps, device)
    if grad_norms and not return_info:
        raise ValueError("grad_norms=True records into the info: pass return_info=True too")
    tail = check_int("differentiable", differentiable, 0)
    if tail:
        if tail > steps:
            raise ValueError(f"differentiable must be <= steps ({steps}), got {tail}")
        if return_energies or trajectory or grad_norms:
            raise ValueError("differentiable=n runs its last n updates in autograd, which records no "
                             "energies, trajectory or grad_norms")
        head = steps - tail
        x, info = sample(expr, x0, steps=head, step_size=eta[:head], noise=sigma[:head], clamp=clamp,
                         grad_clip=grad_clip, order=order, seed=seed, backend=backend, graph=graph,
                         grouping=grouping, memory_format=memory_format, compile=compile, autocast=autocast,
                         workers=workers, on_nonfinite=on_nonfinite, init=init, return_info=True,
                         graph_steps=graph_steps)
        rest = [v[head:].tolist() if isinstance(v, Tensor) else v[head:] for v in (eta, sigma)]
        x = autograd_steps(expr, x, first=head, step_size=rest[0], noise=rest[1], order=order, seed=seed,
                           clamp=clamp, grad_clip=grad_clip, model_dtype=x0.dtype).to(x0.dtype)
        info.steps = steps
        return (x, info) if return_info else x
    leaves = expr.leaves()
    batch = x0.shape[0]
    state_dtype = torch.float32 if x0.dtype == torch.float64 else x0.dtype
    parts = [inspect_model(leaf.model) for leaf in leaves]
    modules = list({id(m): m for p in parts for m in p.modules}.values())
    reinit = on_nonfinite == "reinit"

    with torch.inference_mode(False), frozen_parameters(modules):
        evaluator = LeafEvaluator(leaves, batch, x0.shape[1:], device, model_dtype=x0.dtype,
                                  grad_dtype=state_dtype, grouping=grouping, memory_format=memory_format,
                                  autocast=autocast, compile=compile, workers=workers)
        info = SampleInfo(seed=seed, steps=steps, backend=stepper.backend, graph="eager",
                          grouping=evaluator.modes, workers=evaluator.workers,
                          warnings=list(evaluator.warnings))
        energies = torch.zeros(steps, batch, dtype=torch.float32, device=device) if return_energies else None
        traj = (torch.empty(steps // every + 1, *x0.shape, dtype=state_dtype, device=device)
                if trajectory else None)
        if batch == 0 or steps == 0:
            result = x0.detach().clone()
            if traj is not None:
                traj[0].copy_(result)
        else:
            window = min(graph_steps, steps)

            def new_chain(device_scalars: bool) -> Chain:
                return Chain(evaluator, stepper, x0.shape, state_dtype, device, device_scalars=device_scalars,
                             window=window, order=order)

            chain, replays = None, None
            use_graph, why = graph_plan(graph, device, steps,
                                         energies is not None or traj is not None or grad_norms, modules, parts)
            host = device.type == "cpu" and not use_graph  # scalars on the host only for CPU eager chains
            sched = schedule_by_step(eta, sigma, order, device, host=host)
            if use_graph:
                key = graph_key(expr, leaves, parts, modules, x0, (
                    stepper.backend, stepper.order, stepper.grad_clip, stepper.clamp, grouping, memory_format,
                    str(autocast),
                    repr(sorted(compile.items())) if isinstance(compile, dict) else compile, str(state_dtype),
                    window))
                chain, replays, info.graph = _graphed_chain(key, new_chain, leaves, x0, seed, sched, steps, window)
                if chain is None and "failed (" in info.graph:
                    info.warnings.append(info.graph)
            elif why:
                info.graph = f"eager: {why}"
            if chain is None:
                chain = new_chain(device_scalars=not host)
                chain.load(x0.detach(), seed, sched)
            if reinit:
                chain.reinit_init = _init_fn(init, clamp, x0.shape[1:], state_dtype, device, seed)
            if grad_norms:
                info.grad_norms = _record_grad_norms(chain, expr.program, grad_clip, steps)
            result = _run(chain, leaves, steps, seed, every, replays, reinit, energies, traj, info)
            if replays is not None:
                result = result.clone()  # the static buffer belongs to the cached graph

    out = [result.to(x0.dtype) if result.dtype != x0.dtype else result]
    if energies is not None:
        out.append(energies)
    if traj is not None:
        out.append(traj.to(x0.dtype))
    if return_info:
        out.append(info)
    return out[0] if len(out) == 1 else tuple(out)


def _run(chain: Chain, leaves, steps: int, seed: int, every: int, replays, reinit: bool, energies, traj,
         info: SampleInfo) -> Tensor:
    """Drive the loaded chain, read its flag once, raise or report; return the state buffer."""

    def raise_at(s: int) -> None:
        bits, state, _, _ = chain.status()
        raise FloatingPointError(nonfinite_message(leaves, bits, state, s, s, steps, seed))

    record = None
    if energies is not None or traj is not None:
        if traj is not None:
            traj[0].copy_(chain.x)

        def record(s: int) -> None:
            if energies is not None:
                energies[s - 1].copy_(chain.energy)
            if traj is not None and s % every == 0:
                traj[s // every].copy_(chain.x)

    drive(chain, steps, replays=replays, reinit=reinit, raise_at=None if reinit else raise_at, record=record)
    bits, state, first, count = chain.status()
    if (bits or state) and not reinit:
        last = min(first + chain.window - 1, steps) if chain.device_scalars else first
        raise FloatingPointError(nonfinite_message(leaves, bits, state, first, last, steps, seed))
    info.reinitialized = count
    info.nonfinite_leaves = [repr(leaves[i]) for i in range(len(leaves)) if bits >> i & 1]
    info.nonfinite_state = state
    return chain.x


def langevin(energy_fn: Callable[[Tensor], Tensor], x0: Tensor, *, steps: int, step_size, noise=None,
             clamp: tuple[float, float] | None = None, order: str = "noise_first", ascent: bool = False,
             noise_scale=None, **options):
    """Langevin dynamics on any energy callable: the one-call replacement of a research sampling loop.

    The chain descends ``energy_fn``: ``x <- x - step_size * grad energy_fn(x) + noise * xi``. Code that
    climbs a score or log-density instead (JEM's ``sample_q``, short_run: ``x += lr * grad f(x) +
    std * randn``) passes ``f`` with ``ascent=True``. docs/conventions.md maps the public research
    loops to their one-call replacements.

    Args:
        energy_fn: ``x [B, ...] -> energies`` of shape ``(B,)``, ``(B, 1)`` or ``(B, k)`` (summed over
            the trailing dimensions; ``()`` at B = 1), differentiable in ``x``: a model,
            ``lambda x: model(x, c)``, an analytic energy.
        x0, steps, step_size: as for :func:`sample`.
        noise: ``sigma``, the standard deviation of the noise added per update, as for :func:`sample`.
        noise_scale: instead of ``noise``: TorchEBM's convention, whose update adds
            ``noise_scale * sqrt(2 * step_size) * randn`` (a number, a schedule, a callable or a
            scheduler object, like ``step_size``; :func:`ebm_fast.schedules.noise_from_scale`).
        clamp: ``(lo, hi)`` or None (default None: no clamp, the same default as :func:`sample`; the
            released image code passes ``(0, 1)``).
        order: ``"noise_first"`` (default, the released code's loop) or ``"ula"``.
        ascent: ``energy_fn`` returns a quantity to climb (a log-density, JEM's ``logsumexp`` of the
            logits): the chain runs on the energy ``-energy_fn(x)``.
        **options: any other option of :func:`sample` (``method="mala"`` / ``"hmc"`` with
            ``temperature``, ``leapfrog_steps``, ``mass``, ``adapt``; ``seed``, ``grad_clip``, ``backend``, ``graph``,
            ``return_energies``, ``trajectory``, ``every``, ``return_info``, ...).

    Returns:
        As :func:`sample`.
    """
    if not callable(energy_fn):
        raise TypeError(f"energy_fn must be callable x -> energies, got {type(energy_fn).__name__}")
    if not isinstance(ascent, bool):
        raise TypeError(f"ascent must be True or False, got {type(ascent).__name__}")
    if noise_scale is not None:
        if noise is not None:
            raise ValueError("pass noise (the noise's standard deviation) or noise_scale (TorchEBM's: "
                             "noise = noise_scale * sqrt(2 * step_size)), not both")
        noise = noise_from_scale(noise_scale, step_size, check_int("steps", steps, 0))
    return sample(Concept(Negated(energy_fn) if ascent else energy_fn), x0, steps=steps, step_size=step_size,
                  noise=noise, clamp=clamp, order=order, **options)


# ---- helpers of sample() -------------------------------------------------------------------------
def _graphed_chain(key: tuple, new_chain: Callable[[bool], Chain], leaves, x0: Tensor, seed: int, sched,
                   steps: int, window: int):
    """``(chain, replays, info.graph)``: a cached or newly captured chain, loaded with ``x0``; or
    ``(None, None, why)`` when capture fails (warned once per key) and the chain must run eagerly."""
    x0 = x0.detach()

    def capture(chain: Chain, n: int) -> Callable[[], None]:
        chain.load(x0, seed, sched)  # the capture's warm-up steps need a valid state
        chain.begin_chunk(1, n)
        return graphs.capture(lambda: chain.run_steps(n), chain.warmup_step, x0.device)

    chain, replays, status = graphed_chain(key, new_chain, leaves, replay_lengths(steps, window), capture,
                                           what="Langevin", stacklevel=3)
    if chain is not None:
        chain.load(x0, seed, sched)  # the capture's warm-up steps moved the state
    return chain, replays, status


def _record_grad_norms(chain: Chain, program, grad_clip: float | None, steps: int) -> Tensor:
    """``[K, B]`` float32, filled by ``chain`` as it steps: row k-1 holds the norms at update k."""
    out = torch.zeros(steps, chain.batch, dtype=torch.float32, device=chain.x.device)
    row = [0]

    def on_grads(e: Tensor, g: Tensor) -> None:
        w, _ = program.weights_and_energy(e.float())
        comp = (w.unsqueeze(2) * g.reshape(chain.num_leaves, chain.batch, -1).float()).sum(0)
        if grad_clip is not None:
            comp = comp.clamp(-grad_clip, grad_clip)
        out[row[0]].copy_(comp.norm(dim=1))
        row[0] += 1

    chain.on_grads = on_grads
    return out


def _init_fn(init, clamp, sample_shape, dtype: torch.dtype, device: torch.device, seed: int):
    """``n -> [n, *sample_shape]`` fresh states for re-initialised chains."""
    if init is not None:
        def user_init(n: int) -> Tensor:
            t = init(n)
            if not isinstance(t, Tensor) or tuple(t.shape) != (n, *sample_shape):
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"init({n}) must return a Tensor of shape {(n, *sample_shape)}, got {got}")
            return t.to(device=device, dtype=dtype)
        return user_init
    lo, hi = float(clamp[0]), float(clamp[1])
    gen = torch.Generator(device=device)
    gen.manual_seed((seed ^ 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)

    def uniform_init(n: int) -> Tensor:
        u = torch.rand((n, *sample_shape), generator=gen, device=device, dtype=torch.float32)
        return (lo + (hi - lo) * u).to(dtype)
    return uniform_init
