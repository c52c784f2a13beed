"""Tests for judging a run's exported models (ebm_fast.paper.eval_models, ``ebm-fast eval models``).

The oracle: a stand-in sampler hands out REAL renders (NumPy renderer, fresh each run) chosen by
each model's known quality q, stored in its head's bias: the first round(q * n) samples of a batch
are the renders nearest their target position, the rest the farthest. The judged accuracy must then
follow q and the best model must be the one with the highest q. The CLI runs end to end on tiny
untrained models with real chains (numbers meaningless).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebm_fast.paper import eval_models as EM
from ebm_fast.cli import main as cli
from ebm_fast.paper import scenes as S
from ebm_fast.paper.evaluate import ROWS
from ebm_fast.paper.judges import Judges
from ebm_fast.models import save_model
from test_evaluate import fresh_seed, save_concepts
from test_expr_parser import tiny_concepts

QUALITY = {250: 0.25, 500: 0.95, 750: 0.55}  # step -> fraction of samples at their target


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pool():
    """Fresh 32x32 NumPy renders as float (N, 3, 32, 32) and their positions (N, 2)."""
    images, labels = S.generate_scenes(S.SceneConfig(n=300, resolution=32, seed=fresh_seed()), renderer="numpy",
                                       workers=1, progress=False)
    return S.images_to_tensor(images), torch.from_numpy(labels["pos"]).float()


@pytest.fixture(scope="module")
def judges():
    return Judges.load()


def make_run(root, steps=QUALITY, attribute="position"):
    """A run folder as `ebm-fast train --export-every` leaves it, each model's quality in its head bias."""
    run = root / "run"
    (run / "models").mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"cond": attribute, "langevin_steps": 2}))
    for step, q in steps.items():
        model, meta = tiny_concepts(fresh_seed(), attributes=(attribute,), resolution=32)[attribute]
        with torch.no_grad():
            model.head.bias.fill_(q)
        save_model(run / "models" / f"model_{step:06d}.pt", model, {**meta, "step": step})
    return run


def quality_sampler(pool):
    images, pos = pool

    def sampler(expr, n, seed):
        (leaf,) = expr.leaves()
        q = float(leaf.model.head.bias)
        d = torch.cdist(leaf.cond.float(), pos)  # (n, pool)
        near, far = d.argmin(dim=1), d.argmax(dim=1)
        k = round(q * n)
        return images[torch.cat([near[:k], far[k:]])]

    return sampler


def test_judged_accuracy_follows_quality_and_the_best_is_picked(tmp_path, pool, judges):
    run = make_run(tmp_path)
    seen = []
    recs = EM.judge_run(run, [ROWS["position"]], judges, 40, sampler=quality_sampler(pool), seed=fresh_seed(),
                        progress=seen.append)
    assert [r["step"] for r in recs] == [250, 500, 750] and len(seen) == 3
    for r in recs:
        acc = r["rows"]["position"]["position"]
        assert abs(acc - QUALITY[r["step"]]) <= 0.1, (r["step"], acc)
        assert r["score"] == acc
    assert EM.best(recs)["step"] == 500
    table = EM.format_judged(recs, [ROWS["position"]])
    assert table.splitlines()[2].endswith("*") and "position:position" in table
    # the best export still on disk: what scripts/gpu_train.sh packs
    assert EM.best_export(run) == run / "models" / "model_000500.pt"
    (run / "models" / "model_000500.pt").unlink()
    assert EM.best_export(run) == run / "models" / "model_000750.pt"
    assert EM.best_export(tmp_path / "elsewhere") is None


def test_a_second_call_judges_only_new_models_and_every_k(tmp_path, pool, judges):
    run = make_run(tmp_path)
    sampler, seed = quality_sampler(pool), fresh_seed()
    first = EM.judge_run(run, [ROWS["position"]], judges, 20, sampler=sampler, seed=seed)
    seen = []
    again = EM.judge_run(run, [ROWS["position"]], judges, 20, sampler=sampler, seed=seed, progress=seen.append)
    assert seen == [] and again == first
    # a new export: only it is judged; another protocol (n) is judged afresh and kept beside the first
    model, meta = tiny_concepts(fresh_seed(), attributes=("position",), resolution=32)["position"]
    with torch.no_grad():
        model.head.bias.fill_(0.75)
    save_model(run / "models" / "model_001000.pt", model, meta)
    EM.judge_run(run, [ROWS["position"]], judges, 20, sampler=sampler, seed=seed, progress=seen.append)
    assert [r["step"] for r in seen] == [1000]
    seen.clear()
    every2 = EM.judge_run(run, [ROWS["position"]], judges, 24, sampler=sampler, seed=seed, every=2,
                          progress=seen.append)
    assert [r["step"] for r in every2] == [500, 1000] == [r["step"] for r in seen]
    seen.clear()  # multiples of 500 steps and the newest: 500 and 1000 reused, nothing judged anew
    by_step = EM.judge_run(run, [ROWS["position"]], judges, 24, sampler=sampler, seed=seed, every_steps=500,
                           progress=seen.append)
    assert [r["step"] for r in by_step] == [500, 1000] and seen == []
    assert [r["step"] for r in EM.judge_run(run, [ROWS["position"]], judges, 24, sampler=sampler, seed=seed,
                                            every_steps=400, progress=seen.append)] == [1000]
    saved = json.loads((run / "models" / "judged.json").read_text())["records"]
    assert sorted((r["protocol"]["n"], r["step"]) for r in saved) == \
        [(20, 250), (20, 500), (20, 750), (20, 1000), (24, 500), (24, 1000)]


def test_bad_inputs_name_the_problem(tmp_path, judges):
    run = make_run(tmp_path, {100: 0.5})
    with pytest.raises(ValueError, match="does not use the run's attribute 'position'"):
        EM.judge_run(run, [ROWS["color"]], judges, 4)
    with pytest.raises(ValueError, match="every"):
        EM.judge_run(run, [ROWS["position"]], judges, 4, every=0)
    with pytest.raises(ValueError, match="every_steps"):
        EM.judge_run(run, [ROWS["position"]], judges, 4, every_steps=0)
    with pytest.raises(ValueError, match="one of them"):
        EM.judge_run(run, [ROWS["position"]], judges, 4, every=2, every_steps=100)
    (run / "models" / "judged.json").write_text("{half a file")
    with pytest.raises(ValueError, match="judged.json: not a judged-models file"):
        EM.judge_run(run, [ROWS["position"]], judges, 4)
    with pytest.raises(FileNotFoundError, match="config.json"):
        EM.run_attribute(tmp_path / "nothing")
    (tmp_path / "empty" / "models").mkdir(parents=True)
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"cond": "color"}))
    with pytest.raises(FileNotFoundError, match="--export-every"):
        EM.judge_run(tmp_path / "empty", [ROWS["color"]], judges, 4)


def test_negated_terms_score_one_minus_accuracy():
    row = ROWS["conj_pos_not_color"]
    assert EM.row_score(row, {"position": 0.8, "color": 0.1}) == pytest.approx((0.8 + 0.9) / 2)


def test_cli_end_to_end_with_real_chains(tmp_path, capsys):
    run = make_run(tmp_path, {10: 0.0, 20: 0.0})
    others = save_concepts(tmp_path / "others", tiny_concepts(fresh_seed(), resolution=32), ("color",))
    best_to = tmp_path / "out" / "position.pt"
    rc = cli(["eval", "models", str(run), "--rows", "position", "conj_pos_color", "--n", "3", "--steps", "2",
              "--batch-size", "2", "--concepts", str(others), "--best-to", str(best_to), "--threads", "1",
              "--seed", str(fresh_seed() % 1000)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "conj_pos_color:color" in out and "best: step" in out
    step = int(out.split("best: step ")[1].split()[0])
    assert best_to.read_bytes() == (run / "models" / f"model_{step:06d}.pt").read_bytes()
    recs = json.loads((run / "models" / "judged.json").read_text())["records"]
    assert {r["step"] for r in recs} == {10, 20} and all(r["protocol"]["settings"]["steps"] == 2 for r in recs)
    rc = cli(["eval", "models", str(run), "--rows", "color", "--n", "2"])
    assert rc == 2 and "does not use the run's attribute" in capsys.readouterr().err
