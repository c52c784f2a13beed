"""Tests for ``ebm-fast eval four-way`` (ebm_fast.paper.eval_four_way): the rows, the shared targets,
the chance levels against Monte Carlo, judging against an oracle sampler that renders the asked
targets, and the command end to end on a few samples of a short chain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebm_fast.cli import main as cli
from ebm_fast.paper import eval_four_way as fw
from ebm_fast.paper import scenes as S
from ebm_fast.paper.concepts import load_concepts
from ebm_fast.paper.judges import POSITION_THRESHOLD, SIZE_TOLERANCE, Judges

RNG = np.random.default_rng()


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


def render_targets(expr, n: int, seed: int, resolution: int = 64, shuffle: bool = False) -> torch.Tensor:
    """A sampler that renders exactly what each leaf of ``expr`` asks for (or, with ``shuffle``, what
    the next sample asks for): an oracle whose judged accuracy must be high (or near chance)."""
    labels = S.sample_scene_params(S.SceneConfig(n=n, resolution=resolution, seed=seed))
    for leaf in expr.leaves():
        attribute = leaf.name.split("[")[0]
        cond = leaf.cond.detach().cpu()
        cond = cond.roll(1, 0) if shuffle else cond
        if attribute in ("shape", "color"):
            labels[attribute] = cond.argmax(1).numpy().astype(np.int64)
        elif attribute == "position":
            labels["pos"] = cond.numpy().astype(np.float32)
        else:
            labels["size"] = cond[:, 0].numpy().astype(np.float32)
    return S.images_to_tensor(S.render_scenes(labels, resolution, "numpy", progress=False))


@pytest.fixture(scope="module")
def concepts():
    return load_concepts(None, attributes=list(fw.ATTRIBUTE_ORDER))


@pytest.fixture(scope="module")
def judges():
    return Judges.load()


def test_rows_add_one_attribute_each_and_the_alone_rows_cover_the_rest():
    assert [len(r.terms) for r in fw.FIG4] == [1, 2, 3, 4]
    for a, b in zip(fw.FIG4, fw.FIG4[1:]):
        assert b.terms[:-1] == a.terms
    assert [t.attribute for t in fw.FIG4[-1].terms] == list(fw.ATTRIBUTE_ORDER)
    assert {r.terms[0].attribute for r in fw.ALONE} | {"shape"} == set(fw.ATTRIBUTE_ORDER)
    assert len({r.key for r in fw.FIG4 + fw.ALONE}) == 7


def test_chance_levels_match_monte_carlo():
    rng = np.random.default_rng(fresh_seed())
    m = 400_000
    a, b = rng.uniform(-1, 1, (m, 2)), rng.uniform(-1, 1, (m, 2))
    position = np.mean(np.linalg.norm(a - b, axis=1) <= POSITION_THRESHOLD)
    s1, s2 = rng.uniform(*S.SIZE_RANGE, m), rng.uniform(*S.SIZE_RANGE, m)
    size = np.mean(np.abs(s1 - s2) <= SIZE_TOLERANCE)
    chance = fw.chance_levels()
    assert abs(chance["position"] - position) < 0.003
    assert abs(chance["size"] - size) < 0.003
    assert chance["shape"] == pytest.approx(1 / 3) and chance["color"] == pytest.approx(1 / 7)


def test_rows_read_the_same_targets_and_an_oracle_scores_high(concepts, judges):
    n, seed = 24, fresh_seed()
    seen = []

    def oracle(expr, m, s):
        seen.append({leaf.name.split("[")[0]: leaf.cond.clone() for leaf in expr.leaves()})
        return render_targets(expr, m, s)

    results = fw.evaluate_four_way(concepts, judges, n, seed=seed, sampler=oracle, keep_images=4)
    assert [r.row.key for r in results] == [r.key for r in fw.FIG4 + fw.ALONE]
    for a in fw.ATTRIBUTE_ORDER:  # every row that asks for an attribute asks for the same targets
        asked = [s[a] for s in seen if a in s]
        assert len(asked) == sum(a in r.row.metrics for r in results)
        assert all(torch.equal(asked[0], t) for t in asked[1:])
    four = results[3].metrics
    assert min(four.values()) >= 0.9  # renders of the targets: 1.0 on every attribute at three seeds
    shuffled = fw.evaluate_four_way(concepts, judges, n, seed=seed, rows=fw.FIG4[-1:], keep_images=0,
                                    sampler=lambda e, m, s: render_targets(e, m, s, shuffle=True))[0].metrics
    assert shuffled["position"] < 0.6 and shuffled["color"] < 0.6  # chance 0.105 and 0.143


def test_cli_writes_the_report_and_grids(tmp_path, capsys):
    out = tmp_path / "fig4"
    rc = cli(["eval", "four-way", "--n", "3", "--steps", "1", "--seed", str(fresh_seed() % 1000), "--threads", "1",
              "--grid-columns", "2", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in data["rows"]] == [r.key for r in fw.FIG4 + fw.ALONE]
    assert data["target"] == fw.TARGET and set(data["chance"]) == set(fw.ATTRIBUTE_ORDER)
    assert all(0.0 <= v <= 1.0 for r in data["rows"] for v in r["metrics"].values())
    assert (out / "fig4.png").is_file() and (out / "alone.png").is_file()
    report = (out / "report.md").read_text()
    assert "Shape & Position & Size & Color" in report and "fig4.png" in report
    assert "wrote" in capsys.readouterr().out
    rc = cli(["eval", "four-way", "--n", "2", "--steps", "1", "--no-alone", "--threads", "1", "--out", str(out)])
    assert rc == 0 and len(json.loads((out / "results.json").read_text())["rows"]) == 4


@pytest.mark.parametrize("argv, needle", [(["--n", "0"], "--n"), (["--grid-columns", "0"], "--grid-columns"),
                                          (["--concepts", "/nonexistent/dir"], "missing")])
def test_cli_mistakes_are_one_line_and_status_2(tmp_path, capsys, argv, needle):
    rc = cli(["eval", "four-way", *argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.startswith("ebm-fast eval four-way: error:")
    assert len(err.strip().splitlines()) == 1
