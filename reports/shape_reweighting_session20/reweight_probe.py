"""Judge the + Shape row (Conj(position, shape)) with the shape term reweighted at sampling time.

    python reweight_probe.py weight   SHAPE_MODEL 1,3 [N]        # position + w * shape_c
    python reweight_probe.py guidance SHAPE_MODEL 1,3 [N] [T]    # position + shape_c + w * (-log p(c | x))

Guidance amplifies only the part of the shape energy that tells the shapes apart: under the shape
model's own classifier, -log p(c | x) = E(x | c) - Or_T(E(x | k) for every shape k) at T = 1, so the
composed energy is position + (1 + w) * shape_c - w * Or_T(shape_sphere, shape_cylinder, shape_box).
The position concept is the shipped one; chains are 400 steps of 7.5, noise 0.005, clip 0.01,
seed 0, one thread; the shipped judges score them.
"""
from __future__ import annotations

import sys
import time

import torch

from ebm_fast.compose import And, Or, Scale
from ebm_fast.concepts import load_concepts
from ebm_fast.evaluate import ROWS, evaluate_row, make_concept
from ebm_fast.judges import Judges
from ebm_fast.sample_cli import ChainSettings, sample_images

N_SHAPES = 3
SETTINGS = ChainSettings(steps=400, step_size=7.5, noise=0.005, grad_clip=0.01, batch_size=128)


def weighted(concepts, w: float, temperature: float):
    def sampler(expr, m, seed):
        return sample_images(And(*expr.children(), coefs=[1.0, w]), m, SETTINGS, 32, seed)
    return sampler


def guided(concepts, w: float, temperature: float):
    def sampler(expr, m, seed):
        position, shape = expr.children()
        every_shape = Or(*[make_concept(concepts, "shape", torch.full((m,), k), per_sample=True)
                           for k in range(N_SHAPES)], temperature=temperature)
        energy = And(position, shape, coefs=[1.0, 1.0 + w])
        if w:
            energy = And(energy, Scale(every_shape, -w))
        return sample_images(energy, m, SETTINGS, 32, seed)
    return sampler


MODES = {"weight": weighted, "guidance": guided}


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] not in MODES:
        sys.exit(__doc__)
    mode, model, weights = argv[0], argv[1], [float(w) for w in argv[2].split(",")]
    n = int(argv[3]) if len(argv) > 3 else 128
    temperature = float(argv[4]) if len(argv) > 4 else 1.0
    torch.set_num_threads(1)
    concepts = load_concepts(None, attributes=["position"])
    concepts.update(load_concepts({"shape": model}))
    judges = Judges.load(None)
    for w in weights:
        start = time.time()
        result = evaluate_row(ROWS["continual_pos_shape"], concepts, judges, n,
                              sampler=MODES[mode](concepts, w, temperature), settings=SETTINGS, seed=0)
        metrics = {k: round(v, 3) for k, v in result.metrics.items()}
        print(model, mode, "w", w, "T", temperature, metrics, f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
