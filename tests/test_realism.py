"""The realism measure: the Fréchet distance against a slow oracle, and its floor and ceiling on renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_fast.paper.realism import frechet_distance, fresh_renders, realism


def _oracle(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance the long way: tr((S_a S_b)^1/2) from the eigenvalues of the (non-symmetric) product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s_a @ s_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b)
                 - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_distance_matches_the_oracle_and_the_closed_form():
    g = np.random.default_rng(int(torch.randint(0, 2 ** 31, (1,))))
    a = g.normal(size=(300, 6)) @ g.normal(size=(6, 6))
    b = g.normal(size=(200, 6)) @ g.normal(size=(6, 6)) + g.normal(size=6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_oracle(a, b), rel=1e-8)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-8)
    # commuting covariances: |dmu|^2 + sum (sqrt d1 - sqrt d2)^2, here from large samples
    q, _ = np.linalg.qr(g.normal(size=(4, 4)))
    d1, d2 = g.uniform(0.5, 2, 4), g.uniform(0.5, 2, 4)
    mu = g.normal(size=4)
    x = (g.normal(size=(200_000, 4)) * np.sqrt(d1)) @ q.T
    y = (g.normal(size=(200_000, 4)) * np.sqrt(d2)) @ q.T + mu
    exact = float((mu ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum())
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(exact, abs=0.03)


def test_frechet_distance_bad_inputs():
    with pytest.raises(ValueError, match=r"expected \(N, F\) and \(M, F\) features"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3))


def test_realism_puts_renders_near_zero_and_noise_at_one():
    from ebm_fast.paper.judges import Judges

    judges = Judges.load()
    seed = int(torch.randint(1000, 10 ** 6, (1,)))
    renders = fresh_renders(48, 32, seed=seed, renderer="numpy")
    reference = fresh_renders(24, 32, seed=seed + 1, renderer="numpy")
    samples = fresh_renders(24, 32, seed=seed + 2, renderer="numpy")
    assert renders.shape == (48, 3, 32, 32) and 0 <= float(renders.min()) and float(renders.max()) <= 1
    feats = judges.features(renders)
    assert feats.shape == (48, 160) and bool(torch.isfinite(feats).all())
    r = realism(judges, samples, renders, reference, seed=seed)
    assert r["floor"] < r["noise"] and abs(r["scaled"]) < 0.15
    blurred = torch.nn.functional.avg_pool2d(samples, 5, 1, 2)  # a worse sampler scores worse
    assert realism(judges, blurred, renders, reference)["scaled"] > r["scaled"] + 0.05
    noise = realism(judges, torch.rand(24, 3, 32, 32), renders, reference)
    assert noise["scaled"] == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="must be as many as the samples"):
        realism(judges, samples, renders, reference[:10])
