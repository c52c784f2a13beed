"""The analytic demo of ``ebm-fast demo``: compose concepts, sample them with the fused sampler, check the samples.

The concepts here are 2-D Gaussian energies of one conditional model (the condition is the mean),
so every composition has a closed-form answer to check against: a conjunction is the
precision-weighted Gaussian, a negation inside a conjunction a Gaussian with reduced precision, a
disjunction a mixture. The demo prints, per expression, the measured and the expected statistics,
writes a scatter plot per expression, and times ``ebm_fast.sample`` against the released research
code's loop (one forward per concept, autograd of the summed energy, step) on the same chain.
"""

from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

import ebm_fast as ef

from ..progress import progress_bar, say
from ..released_loop import released_code_chain

__all__ = ["GaussianConcept", "run_gaussian"]

SIGMA = 0.5  # every concept: N(mean, SIGMA^2 I)


class GaussianConcept(nn.Module):
    """``E(x | mean) = |x - mean|^2 / (2 sigma^2)``; ``x`` ``(B, 2)``, ``mean`` ``(B, 2)`` -> ``(B,)``."""

    def __init__(self, sigma: float = SIGMA):
        super().__init__()
        self.register_buffer("inv_var", torch.tensor(1.0 / sigma**2))

    def forward(self, x, mean):
        return 0.5 * self.inv_var * ((x - mean) ** 2).sum(dim=1)


def _mixture(m1, m2, comp_var):
    """Mean and per-axis variance of the equal-weight mixture of N(m1, v I) and N(m2, v I)."""
    return (m1 + m2) / 2, comp_var + ((m1 - m2) / 2) ** 2


def _expectations(a, b, c, alpha):
    """(name, expr builder, expected mean, expected per-axis variance, expected left fraction or None).

    The disjunctions are equal-weight mixtures: A and B have equal normalisers, and so do A & C and
    B & C, because |a - c| = |b - c|.
    """
    var = SIGMA**2

    def iso(v):  # the same variance on both axes
        return torch.full_like(a, v)

    return [
        ("A & B", lambda A, B, C: A & B, (a + b) / 2, iso(var / 2), None),
        ("A | B", lambda A, B, C: A | B, *_mixture(a, b, var), 0.5),
        (f"C & ~A (alpha={alpha})", lambda A, B, C: C & ef.Not(A, alpha=alpha),
         (c - alpha * a) / (1 - alpha), iso(var / (1 - alpha)), None),
        ("(A | B) & C", lambda A, B, C: (A | B) & C, *_mixture((a + c) / 2, (b + c) / 2, var / 2), 0.5),
    ]


# every check allows Z standard errors of its statistic over the chains (which are independent)
Z = 5.0
# ULA's stationary variance exceeds the target's by 1/(1 - eta*lambda/2): 1-2% at eta = 0.005 for
# these curvatures (lambda = 1/sigma^2 = 4, and 8 in a conjunction)
ULA_VARIANCE_BIAS = 0.03


def _check(xs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, left: float | None) -> tuple[bool, str]:
    """Compare chains ``xs`` ``(n, 2)`` with the expected statistics; ``(ok, table cells)``."""
    n = xs.shape[0]
    m, v = xs.mean(0), xs.var(0).mean().item()
    ok = bool(((m - mean).abs() <= Z * (var / n).sqrt()).all())
    expected_v = var.mean().item()
    # the relative standard error of a sample variance is at most sqrt(2 / n) for Gaussian tails
    ok &= abs(v / expected_v - 1) <= ULA_VARIANCE_BIAS + Z * math.sqrt(2 / n)
    cells = f"{_fmt(m)} / {_fmt(mean):<22}" + f"{v:.3f} / {expected_v:.3f}".ljust(22)
    if left is not None:
        frac = (xs[:, 0] < 0).float().mean().item()
        ok &= abs(frac - left) <= Z * math.sqrt(left * (1 - left) / n)
        cells += f"{frac:.3f} / {left:.2f}"
    return ok, cells


def _scatter_png(points: torch.Tensor, path: str, title: str, size: int = 256, extent: float = 3.0) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size + 16), "white")
    draw = ImageDraw.Draw(img)
    pix = ((points.clamp(-extent, extent) + extent) / (2 * extent) * (size - 1)).round().long().tolist()
    for px, py in pix:
        draw.point((px, size - 1 - py + 16), fill=(30, 60, 200))
    draw.text((4, 2), title, fill="black")
    img.save(path)


def run_gaussian(*, batch: int = 4096, steps: int = 1000, eta: float = 0.005, seed: int = 0, backend: str = "auto",
                 out: str = "runs/demo") -> int:
    """The analytic demo: sample the four compositions with ``batch`` chains of ``steps`` ULA steps of
    size ``eta`` (noise sqrt(2 eta)), check each against its closed form, write a scatter plot per
    expression to ``out``, and time the fused sampler against the released code's loop. Returns 0 when
    every expression matches, else 1."""
    if backend not in ef.ops.BACKENDS:
        raise ValueError(f"--backend: expected one of {ef.ops.BACKENDS}, got {backend!r}")
    if batch < 2 or steps < 1 or not eta > 0:
        raise ValueError(f"expected --batch >= 2, --gaussian-steps >= 1 and --eta > 0, got {batch}, {steps}, {eta}")

    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = GaussianConcept().to(device)
    a, b, c = (torch.tensor(v, device=device) for v in ((-1.0, 0.0), (1.0, 0.0), (0.0, 1.5)))
    A, B, C = ef.Concept(model, a, name="A"), ef.Concept(model, b, name="B"), ef.Concept(model, c, name="C")
    noise = math.sqrt(2 * eta)  # Langevin: sigma^2 = 2 eta
    os.makedirs(out, exist_ok=True)
    resolved = ef.ops.resolve_backend(backend, device)
    print(f"ebm_fast {ef.__version__} demo on {device} (fused-step backend: {resolved}); "
          f"{batch} chains x {steps} steps, eta={eta}, sigma=sqrt(2 eta); each check allows {Z:g} "
          "standard errors")
    print(f"concepts: Gaussians N(mean, {SIGMA}^2 I) with means A={a.tolist()} B={b.tolist()} C={c.tolist()}")
    print(f"{'expression':<24}{'mean (measured / expected)':<40}{'var / expected':<22}{'left fraction':<16}")
    failures = 0
    expectations = _expectations(a, b, c, alpha=0.5)
    # one tick per chain run: each expression, then a warm-up and a timed run of each side of the timing
    bar = progress_bar(total=len(expectations) + 4, desc="demo", unit="chain")
    for name, build, mean, var, left in expectations:
        expr = build(A, B, C)
        x0 = torch.randn(batch, 2, device=device) * 2
        xs = ef.sample(expr, x0, steps=steps, step_size=eta, noise=noise, clamp=None, order="ula",
                       seed=seed, backend=backend).cpu()
        ok, cells = _check(xs, mean.cpu(), var.cpu(), left)
        row = f"{name:<24}{cells}"
        say(row + ("   ok" if ok else "   MISMATCH"))
        bar.update(1)
        failures += not ok
        _scatter_png(xs[:2000], os.path.join(out, _slug(name) + ".png"), name)

    # speed: the fused sampler against the released code's loop on the nested expression
    expr = (A | B) & C
    x0 = torch.randn(batch, 2, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    timings = {}
    for label, run in (
        ("released-code loop", lambda: released_code_chain(expr, x0, steps=steps, step_size=eta, noise=noise,
                                                           order="ula", generator=gen)),
        ("ebm_fast.sample", lambda: ef.sample(expr, x0, steps=steps, step_size=eta, noise=noise, clamp=None,
                                              order="ula", seed=seed, backend=backend)),
    ):
        run()  # warm-up (graph capture, kernel compilation)
        bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[label] = time.perf_counter() - t0
        bar.update(1)
    bar.close()
    ratio = timings["released-code loop"] / timings["ebm_fast.sample"]
    print(f"speed on {expr!r}, {batch} chains x {steps} steps: released-code loop "
          f"{timings['released-code loop'] * 1e3:.0f} ms, ebm_fast.sample {timings['ebm_fast.sample'] * 1e3:.0f} ms "
          f"({ratio:.2f}x)")
    print(f"plots written to {os.path.abspath(out)}")
    print("all expressions match their closed form" if not failures else f"{failures} expression(s) MISMATCH")
    return 1 if failures else 0


def _fmt(v: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(t):+.3f}" for t in v) + ")"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")
