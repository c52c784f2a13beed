"""One training iteration (negatives + update) of :class:`ebm_fast.training.Trainer` against the released code's loop.

The reference is an IGEBM-style iteration written the way the released code writes it, with the same
model (same weights), K, batch, replay buffer and data:

    x = replay draw
    for k in range(K):                      # the model stays in train mode, parameters require grad
        x = x + noise * randn_like(x)
        x.requires_grad_(True)
        E = model(x, c)
        g = autograd.grad(E.sum(), x)[0]
        x = (x - step_size * g.clamp(-clip, clip)).clamp(0, 1).detach()
    E+ = model(x+, c); E- = model(x, c)      # two forwards
    loss = (E+ - E-).mean() + alpha (E+^2 + E-^2).mean();  Adam step

Both run in one process, alternating round by round (the CI machine is shared: alternation keeps
load changes from favouring one side), and report medians plus where the time goes (sampling vs
update), and the network floor of the chain (K bare forward + input-gradient passes of the model,
eval mode, weights normalised once; docs/contract.md §5). Run ``python benchmarks/bench_train.py`` for a table, or under pytest-benchmark::

    pytest benchmarks/bench_train.py --benchmark-only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytest
import torch

from ebm_fast.training import Trainer, TrainConfig, synthetic_data
from machine import device_name
from timing import sync, timed

CASES = {
    # name: (model, resolution, batch, K, chains under torch.compile)
    "small32-b32-k20": ("small32", 32, 32, 20, False),
    "small32-b32-k20-compile": ("small32", 32, 32, 20, True),
    "tiny16-b32-k20": ("tiny", 16, 32, 20, False),
}


def make_trainer(model: str, resolution: int, batch: int, steps: int, out: str, **kw) -> Trainer:
    cfg = TrainConfig(out=out, model=model, cond="pos", iterations=10**9, batch_size=batch, langevin_steps=steps,
                      replay_capacity=1000, progress=False, **kw)
    return Trainer(cfg, data=synthetic_data(512, resolution, seed=0))


class ReferenceIteration:
    """The released code's training iteration on a copy of the trainer's model, optimiser and buffer."""

    def __init__(self, trainer: Trainer):
        import copy

        self.cfg = trainer.config
        self.model = copy.deepcopy(trainer.model).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas)
        self.trainer = trainer
        self.gen = torch.Generator().manual_seed(1)  # the data order, on the CPU like the trainer's
        self.replay_gen = torch.Generator(device=trainer.device).manual_seed(2)  # the buffer's device

    def sample(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        for _ in range(cfg.langevin_steps):
            x = x + cfg.noise * torch.randn_like(x)
            x.requires_grad_(True)
            energy = self.model(x, c)
            (g,) = torch.autograd.grad(energy.sum(), x)
            if cfg.sample_grad_clip is not None:
                g = g.clamp(-cfg.sample_grad_clip, cfg.sample_grad_clip)
            x = (x - cfg.step_size * g).clamp(0.0, 1.0).detach()
        return x

    def update(self, x_pos, x_neg, c) -> float:
        cfg = self.cfg
        e_pos = self.model(x_pos, c)
        e_neg = self.model(x_neg, c)
        loss = (e_pos - e_neg).mean() + cfg.alpha * (e_pos.square() + e_neg.square()).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def step(self) -> dict:
        tr = self.trainer
        idx = torch.randint(0, len(tr.data), (self.cfg.batch_size,), generator=self.gen)
        x_pos, (c,) = tr.data.batch(idx, tr.cond_names)
        x0 = tr.replay.sample(self.cfg.batch_size, p=self.cfg.replay_p, generator=self.replay_gen).x
        sync()
        t0 = time.perf_counter()
        x_neg = self.sample(x0, c)
        sync()
        t1 = time.perf_counter()
        self.update(x_pos, x_neg, c)
        sync()
        t2 = time.perf_counter()
        return {"t_sample": t1 - t0, "t_update": t2 - t1}


def network_floor(tr: Trainer, x: torch.Tensor, c: torch.Tensor) -> float:
    """Seconds of K bare forward + input-gradient passes (docs/contract.md §5's network floor of the chain)."""
    from ebm_fast.training.state import sampling_mode as _sampling_mode

    with _sampling_mode(tr.model, cache_weights=True):
        sync()
        t = time.perf_counter()
        for _ in range(tr.config.langevin_steps):
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(tr.model(xg, c).sum(), xg)
        sync()
        return time.perf_counter() - t


def measure(case: str, rounds: int = 5, threads: int | None = None) -> dict:
    """Alternate ``rounds`` reference and ebm_fast iterations; medians and the split in seconds."""
    model, res, batch, steps, compiled = CASES[case]
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        tr = make_trainer(model, res, batch, steps, out, compile=compiled)
        t = time.perf_counter()
        for _ in range(2):  # fill the buffer a little, warm up allocator and kernels (and compile)
            tr.step()
        warmup_s = time.perf_counter() - t
        ref = ReferenceIteration(tr)
        ref.step()
        ours, theirs, floor = [], [], []
        x_floor, (c_floor,) = tr.data.batch(torch.arange(batch), tr.cond_names)
        for _ in range(rounds):
            floor.append(network_floor(tr, x_floor, c_floor))
            t = time.perf_counter()
            s = tr.step()
            ours.append((time.perf_counter() - t, s["t_sample"], s["t_update"]))
            t = time.perf_counter()
            s = ref.step()
            theirs.append((time.perf_counter() - t, s["t_sample"], s["t_update"]))

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    return {
        "case": case, "model": model, "resolution": res, "batch": batch, "steps": steps, "compile": compiled,
        "warmup_s": warmup_s,
        "threads": torch.get_num_threads(), "device": device_name(tr.device), "dtype": "float32", "rounds": rounds,
        "ours_s": med(ours, 0), "ours_sample_s": med(ours, 1), "ours_update_s": med(ours, 2),
        "ref_s": med(theirs, 0), "ref_sample_s": med(theirs, 1), "ref_update_s": med(theirs, 2),
        "speedup": med(theirs, 0) / med(ours, 0), "floor_sample_s": statistics.median(floor),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bench_train_iteration(benchmark, case):
    """Both iterations timed round-robin (7 rounds, the fastest of each: see benchmarks/timing.py)."""
    model, res, batch, steps, compiled = CASES[case]
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        tr = make_trainer(model, res, batch, steps, out, compile=compiled)
        t = time.perf_counter()
        tr.step()  # the first iteration compiles (with compile=True)
        warmup_s = time.perf_counter() - t
        ref = ReferenceIteration(tr)
        times = timed({"ebm_fast": tr.step, "reference": ref.step}, rounds=7)
        benchmark.pedantic(tr.step, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update({"device": device_name(tr.device), "dtype": "float32", "shape": [batch, 3, res, res],
                                 "model": model, "steps": steps, "compile": compiled, "first_iteration_s": warmup_s,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "ref_s": times["reference"], "ours_s": times["ebm_fast"],
                                 "speedup": times["reference"] / times["ebm_fast"]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    print(f"{'case':<18} {'thr':>3} {'ebm_fast s/it':>13} {'(sample':>8} {'update)':>8} {'reference s/it':>14} "
          f"{'(sample':>8} {'update)':>8} {'speed-up':>8} {'floor':>6} {'warm-up s':>9}")
    for case in args.case:
        r = measure(case, args.rounds, args.threads)
        print(f"{case:<18} {r['threads']:>3} {r['ours_s']:>13.3f} {r['ours_sample_s']:>8.3f} {r['ours_update_s']:>8.3f} "
              f"{r['ref_s']:>14.3f} {r['ref_sample_s']:>8.3f} {r['ref_update_s']:>8.3f} {r['speedup']:>7.2f}x "
              f"{r['floor_sample_s']:>6.3f} {r['warmup_s']:>9.1f}")


if __name__ == "__main__":
    main()
