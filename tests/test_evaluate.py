"""Tests for the composition tables (ebm_fast.paper.evaluate) and ``ebm-fast sample`` (ebm_fast.cli.sample).

Scoring is checked on REAL renders (NumPy renderer) fed in place of samples through the injectable
sampler: with targets equal to the true labels the judged accuracy is high, with shuffled targets it
falls to chance. The full pipeline runs end to end on tiny untrained models (numbers meaningless).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import ebm_fast as ef
from ebm_fast.paper import evaluate as E
from ebm_fast.paper import scenes as S
from ebm_fast.paper.judges import Judges
from ebm_fast.models import save_model
from ebm_fast.chains import ChainSettings
from ebm_fast.cli.eval_composition import main as eval_composition
from ebm_fast.cli.sample import main as sample_cli_main
from test_expr_parser import tiny_concepts

RNG = np.random.default_rng()
N = 240


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches on a busy 2-core machine: extra threads only add sync cost
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes():
    """N fresh 32x32 NumPy renders as float (N, 3, 32, 32) and their labels as tensors."""
    images, labels = S.generate_scenes(S.SceneConfig(n=N, resolution=32, seed=fresh_seed()), renderer="numpy",
                                       workers=1, progress=False)
    return S.images_to_tensor(images), {k: torch.from_numpy(v) for k, v in labels.items()}


@pytest.fixture(scope="module")
def judges():
    return Judges.load()


@pytest.fixture(scope="module")
def concepts():
    return tiny_concepts(fresh_seed(), resolution=32)


def feeder(images):
    """A sampler that hands out ``images`` in order, ignoring the expression (batches come in order)."""
    state = {"i": 0}

    def sampler(expr, n, seed):
        assert all(leaf.per_sample and leaf.cond.shape[0] == n for leaf in expr.leaves())
        out = images[state["i"]:state["i"] + n]
        state["i"] += n
        return out

    return sampler


def true_targets(row, labels):
    key = {"position": "pos", "color": "color", "shape": "shape", "size": "size"}
    return [labels[key[t.attribute]] for t in row.terms]


SCORED_ROWS = [r for r in E.TABLE1 + E.TABLE2 + E.EXTRA if r.combine == "and"]


@pytest.mark.parametrize("row", SCORED_ROWS, ids=lambda r: r.key)
def test_true_labels_score_high_and_shuffled_fall_to_chance(row, scenes, judges, concepts):
    images, labels = scenes
    settings = ChainSettings(batch_size=100)  # 3 batches: checks the batching and the feeder order
    tg = true_targets(row, labels)
    res = E.evaluate_row(row, concepts, judges, N, sampler=feeder(images), settings=settings, targets=tg)
    # a negated term is scored against its (negated) target too: here that target is the truth
    assert all(v >= 0.95 for v in res.metrics.values()), res.metrics
    perm = torch.from_numpy(RNG.permutation(N))
    res = E.evaluate_row(row, concepts, judges, N, sampler=feeder(images), settings=settings,
                         targets=[t[perm] for t in tg])
    # chance: colour 1/7, shape 1/3, position within 0.4 of a random point of [-1, 1]^2 ~0.11, size
    # within 0.025 m of another size of the 0.14 m range 1 - (1 - 0.025 / 0.14)^2 ~0.33; with N = 240
    # the standard error is <= 0.031, so these bounds fail with probability < 1e-4
    chance_bound = {"color": 0.3, "shape": 0.5, "position": 0.25, "size": 0.5}
    assert all(v <= chance_bound[m] for m, v in res.metrics.items()), res.metrics
    assert res.n == N and res.images.shape == (64, 32, 32, 3) and res.images.dtype == np.uint8


@pytest.mark.parametrize("key", ["conj_pos_color", "continual_pos_shape_color", "position"])
def test_confusion_counts_match_a_loop_over_the_judges_verdicts(key, scenes, judges, concepts, tmp_path):
    images, labels = scenes
    row = E.ROWS[key]
    # half the samples drawn for their true class, half for a random one: a confusion with mass off the diagonal
    tg = [t.clone() for t in true_targets(row, labels)]
    for term, t in zip(row.terms, tg):
        if term.attribute in ("color", "shape"):
            k = len(judges.colors if term.attribute == "color" else judges.shapes)
            wrong = torch.from_numpy(RNG.integers(0, k, N))
            t[N // 2:] = wrong[N // 2:]
    res = E.evaluate_row(row, concepts, judges, N, sampler=feeder(images), settings=ChainSettings(batch_size=70),
                         targets=tg)
    pred = judges.predict(images)
    class_terms = [(term, t) for term, t in zip(row.terms, tg) if term.attribute in ("color", "shape")]
    assert sorted(res.confusion) == sorted(term.metric for term, _ in class_terms)
    for term, t in class_terms:
        names = list(judges.colors if term.attribute == "color" else judges.shapes)  # the tiny concepts use these
        expected = [[0] * len(names) for _ in names]
        for i in range(N):
            expected[int(t[i])][int(pred[term.attribute][i])] += 1
        c = res.confusion[term.metric]
        assert c["counts"] == expected and c["targets"] == names and c["judged"] == names
        per_class = res.per_class(term.metric)
        for j, name in enumerate(names):
            drawn = int((t == j).sum())
            hit = int(((t == j) & (pred[term.attribute] == j)).sum())
            assert per_class[name][1] == drawn
            assert per_class[name][0] == pytest.approx(hit / drawn) if drawn else math.isnan(per_class[name][0])
        assert sum(expected[j][j] for j in range(len(names))) / N == pytest.approx(res.metrics[term.metric])
    saved = json.loads(json.dumps(res.to_dict()))
    assert saved["confusion"] == res.confusion
    md = E.write_report([res], tmp_path / "rep").read_text()
    assert md.count("fraction as target") == len(class_terms)


def test_drawn_targets_follow_the_rows(concepts):
    gen = torch.Generator().manual_seed(fresh_seed())
    p1, p2 = E.draw_targets(E.ROWS["disj_pos"], 2000, gen, concepts)
    assert (p1 <= 0).all() and (p1 >= -1).all() and (p2 >= 0).all() and (p2 <= 1).all()
    assert p1.std(0).min() > 0.25 and p2.std(0).min() > 0.25           # uniform on a unit side: 0.29
    pos, shape, color = E.draw_targets(E.ROWS["continual_pos_shape_color"], 2000, gen, concepts)
    assert pos.abs().max() <= 1 and pos.std(0).min() > 0.5                 # uniform on [-1, 1]: 0.58
    assert set(shape.tolist()) == {0, 1, 2} and set(color.tolist()) == set(range(len(S.COLOR_NAMES)))


def test_expressions_have_the_row_structure(concepts):
    gen = torch.Generator().manual_seed(fresh_seed())
    row = E.ROWS["conj_not_pos_color"]
    tg = E.draw_targets(row, 6, gen, concepts)
    e = E.build_expr(row, concepts, tg, alpha=0.002)
    assert type(e).__name__ == "And" and type(e.terms[0]).__name__ == "Not" and e.terms[0].alpha == 0.002
    torch.testing.assert_close(e.leaves()[0].cond, tg[0])
    torch.testing.assert_close(e.leaves()[1].cond.argmax(1), tg[1])
    e = E.build_expr(E.ROWS["disj_pos"], concepts, E.draw_targets(E.ROWS["disj_pos"], 6, gen), temperature=0.5)
    assert type(e).__name__ == "Or" and e.temperature == 0.5
    x = torch.rand(6, 3, 32, 32)
    assert torch.isfinite(e.energy(x)).all()
    # terms marked `either` form one Or inside the conjunction: (position 1 | position 2) & color
    from ebm_fast.paper.demo_concepts import NESTED

    tg = E.draw_targets(NESTED, 6, gen, concepts)
    e = E.build_expr(NESTED, concepts, tg, temperature=0.5)
    assert type(e).__name__ == "And" and [type(t).__name__ for t in e.terms] == ["Or", "Concept"]
    assert e.terms[0].temperature == 0.5 and len(e.leaves()) == 3
    torch.testing.assert_close(e.leaves()[1].cond, tg[1])
    leaf_e = [leaf.energy(x).double() for leaf in e.leaves()]
    expect = -0.5 * torch.logsumexp(torch.stack([-leaf_e[0] / 0.5, -leaf_e[1] / 0.5]), 0) + leaf_e[2]
    torch.testing.assert_close(e.energy(x).double(), expect, rtol=1e-5, atol=1e-5)


def test_disjunctions_default_to_the_released_codes_temperature(concepts):
    """Rows, the sampling CLIs and the demo share one disjunction temperature (0.01; ``Or`` itself
    keeps the paper's 1): at T = 1 a chain follows both branches and draws both objects."""
    import argparse

    from ebm_fast.compose import DEFAULT_SAMPLE_TEMPERATURE, Or
    from ebm_fast.paper.chain_options import add_chain_args

    gen = torch.Generator().manual_seed(fresh_seed())
    e = E.build_expr(E.ROWS["disj_pos"], concepts, E.draw_targets(E.ROWS["disj_pos"], 3, gen))
    assert e.temperature == DEFAULT_SAMPLE_TEMPERATURE == 0.01
    p = argparse.ArgumentParser()
    add_chain_args(p)
    assert p.parse_args([]).temperature == DEFAULT_SAMPLE_TEMPERATURE
    assert Or(e.terms[0], e.terms[1]).temperature == 1.0


def test_sampling_tools_balance_disjunctions_at_each_terms_modes(concepts, monkeypatch):
    """Off by default (--balance-or turns it on): sample_images first runs each disjunction term
    alone for balance_steps from the chains' own starting noise, then weights the terms by the median
    energies those chains reached, then samples the balanced expression from the same noise."""
    import argparse

    import ebm_fast.chains as SC
    from ebm_fast.chains import ChainSettings, sample_images
    from ebm_fast.paper.chain_options import add_chain_args, settings_from_args

    p = argparse.ArgumentParser()
    add_chain_args(p)
    args = settings_from_args(p.parse_args([]), concepts)
    assert args.balance_or is False and args.balance_steps == ChainSettings().balance_steps == 100
    on = settings_from_args(p.parse_args(["--balance-or", "--balance-steps", "7"]), concepts)
    assert on.balance_or is True and on.balance_steps == 7
    with pytest.raises(ValueError, match="balance_steps"):
        ChainSettings(balance_steps=-1)
    gen = torch.Generator().manual_seed(fresh_seed())
    e = E.build_expr(E.ROWS["disj_pos"], concepts, E.draw_targets(E.ROWS["disj_pos"], 5, gen))
    calls = []

    def spy(expr, x0, *, steps, **kw):  # a stand-in chain: moves x by a step count of its own
        calls.append((expr, x0.clone(), steps))
        return (x0 + 0.01 * steps).clamp(0, 1)

    monkeypatch.setattr("ebm_fast.sampler.sample", spy)
    seed = fresh_seed() % 1000
    assert ChainSettings().balance_strength == 0.5  # the tools' default: half the gap (docs/sampling.md)
    sample_images(e, 5, ChainSettings(steps=3, balance_or=True, balance_steps=7, balance_strength=1.0), 32, seed)
    assert [(c[0], c[2]) for c in calls[:2]] == [(e.terms[0], 7), (e.terms[1], 7)]
    x0 = calls[0][1]
    assert torch.equal(calls[1][1], x0) and torch.equal(calls[2][1], x0) and calls[2][2] == 3
    bal = calls[2][0]
    assert bal is not e and e.log_weights == (0.0, 0.0)
    with torch.no_grad():
        med = [float(t.energy((x0 + 0.07).clamp(0, 1)).double().median()) for t in e.terms]
    assert bal.log_weights == pytest.approx([(m - sum(med) / 2) / e.temperature for m in med], rel=1e-6)
    calls.clear()
    sample_images(e, 5, ChainSettings(steps=3, balance_or=False), 32, seed)
    assert len(calls) == 1 and calls[0][0] is e and torch.equal(calls[0][1], x0)
    assert SC.balance_disjunctions is ef.balance_disjunctions
    calls.clear()
    sample_images(e, 5, ChainSettings(steps=3, balance_or=True, balance_steps=7, balance_strength=0.25), 32, seed)
    assert calls[2][0].log_weights == pytest.approx([0.25 * b for b in bal.log_weights], rel=1e-6)
    assert settings_from_args(p.parse_args(["--balance-strength", "0.5"]), concepts).balance_strength == 0.5
    with pytest.raises(ValueError, match="balance_strength"):
        ChainSettings(balance_strength=float("inf"))


def test_disjunction_fractions_on_constructed_positions():
    row = E.ROWS["disj_pos"]
    n, k1, k2 = 50, 17, 11
    t1 = torch.tensor([-0.5, -0.5]).expand(n, 2)
    t2 = torch.tensor([0.5, 0.5]).expand(n, 2)
    pred = torch.tensor([-0.9, 0.9]).repeat(n, 1)          # far from both targets
    ang = torch.rand(n) * 2 * math.pi
    ring = torch.stack([ang.cos(), ang.sin()], 1)
    pred[:k1] = t1[:k1] + 0.39 * ring[:k1]                  # inside 0.4 of position 1
    pred[k1:k1 + k2] = t2[:k2] + 0.39 * ring[:k2]           # inside 0.4 of position 2
    pred[-3:] = t1[-3:] + 0.41 * ring[-3:]                  # just outside position 1
    ok = E.score(row, {"pos": pred}, [t1, t2])
    assert ok["position 1"].sum() == k1 and ok["position 2"].sum() == k2
    assert ok["position 1"][:k1].all() and ok["position 2"][k1:k1 + k2].all()


def test_class_targets_map_to_the_judges_names():
    row = E.ROWS["color"]
    names = ("blue", "red", "teal")
    judge_names = ("red", "green", "blue")
    ok = E.score(row, {"color": torch.tensor([2, 0, 0, 1])}, [torch.tensor([0, 1, 2, 1])],
                 class_names_by_attr={"color": names}, judge_names={"color": judge_names})
    assert ok["color"].tolist() == [True, True, False, False]   # teal is unknown to the judges: never right


def fake_results(rng):
    out = []
    for row in (E.ROWS["conj_pos_color"], E.ROWS["disj_pos"], E.ROWS["conj_pos_not_color"]):
        images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
        out.append(E.RowResult(row, {m: float(rng.random()) for m in row.metrics}, 5, images, 0.1))
    return out


def test_report_table_json_and_grids(tmp_path):
    results = fake_results(RNG)
    text = E.format_table(results)
    assert "0.801" in text and "0.8125"[:5] in text and "0.432" in text and "n/a" in text
    for r in results:
        for v in r.metrics.values():
            assert f"{v:.3f}" in text
    path = E.write_report(results, tmp_path / "rep", {"steps": 3})
    md = path.read_text()
    assert md.count("\n| 1 |") == 6 and "low is good" in md and "`steps=3`" in md
    saved = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert [r["metrics"] for r in saved["rows"]] == [r.metrics for r in results]
    for r in results:
        assert f"({r.row.key}.png)" in md
        im = np.asarray(Image.open(tmp_path / "rep" / f"{r.row.key}.png"))
        # a 16-pixel title strip above 1 row x 5 tiles of 32 + 2 pad, scale 2
        assert im.shape == (16 + 2 * (34 + 2), 2 * (5 * 34 + 2), 3)
        assert (im[16 + 4:16 + 68:2, 4:68:2] == r.images[0]).all()
        assert (im[:16] != 255).any()  # the title was drawn


def test_grids_caption_each_tile_with_its_targets(tmp_path, concepts):
    """Each kept sample carries its targets as a caption (a line per term: a position, a class name, ``~`` for
    a negated term, ``|`` for a disjunction's); the grid grows by the caption strip and keeps every tile."""
    gen = torch.Generator().manual_seed(fresh_seed())
    row = E.ROWS["conj_pos_not_color"]
    tg = E.draw_targets(row, 3, gen, concepts)
    labels = E.tile_labels(row, tg, concepts)
    names = concepts["color"][1]["data"]["colors"]
    for i, text in enumerate(labels):
        pos, colour = text.split("\n")
        x, y = (float(v) for v in pos.split(","))
        assert (x, y) == pytest.approx(tuple(tg[0][i].tolist()), abs=0.006)
        assert colour == "~" + names[int(tg[1][i])]
    disj = E.tile_labels(E.ROWS["disj_pos"], E.draw_targets(E.ROWS["disj_pos"], 2, gen), concepts)
    assert all(line.startswith("|") for text in disj for line in text.split("\n"))
    images = np.random.default_rng().integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    from ebm_fast.image_grid import save_image_grid

    plain = np.asarray(Image.open(save_image_grid(tmp_path / "p.png", images, ncols=3)))
    framed = np.asarray(Image.open(save_image_grid(tmp_path / "c.png", images, ncols=3,
                                                   labels=[f"+.{i}0,-.50\nred" for i in range(5)])))
    slot = 2 * 34 + 4 + 2 * 11 + 2  # a row of tiles, its bottom padding, two caption lines
    assert framed.shape == (2 * slot, plain.shape[1], 3)
    for i in range(5):
        r, q = divmod(i, 3)
        assert (framed[r * slot + 4:r * slot + 68:2, q * 68 + 4:q * 68 + 68:2] == images[i]).all()
        assert (framed[r * slot + 72:(r + 1) * slot, q * 68:(q + 1) * 68] != 255).any()  # its caption
    with pytest.raises(ValueError, match="one per image"):
        save_image_grid(tmp_path / "x.png", images, labels=["a"])


def test_sample_writes_the_raw_samples_with_expression_and_targets(tmp_path, concepts, capsys):
    d = save_concepts(tmp_path / "c", concepts)
    text = "shape=sphere & color=red & ~pos=(0.5,-0.25)"
    rc = sample_cli_main([text, "--n", "5", "--steps", "1", "--concepts", str(d), "--out", str(tmp_path / "s.npz"),
                          "--batch-size", "3", "--seed", str(fresh_seed() % 1000)])
    assert rc == 0, capsys.readouterr().err
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (5, 32, 32, 3) and str(z["layout"]) == "NHWC"
        assert str(z["expr"]) == text
        assert json.loads(str(z["targets"])) == [
            {"attribute": "shape", "value": "sphere", "negated": False},
            {"attribute": "color", "value": "red", "negated": False},
            {"attribute": "position", "value": [0.5, -0.25], "negated": True}]
        assert json.loads(str(z["chain"]))["steps"] == 1
        assert len(np.unique(z["images"].reshape(5, -1), axis=0)) == 5  # five different samples


def save_concepts(directory, concepts, attributes=("position", "color", "shape")):
    directory.mkdir(parents=True, exist_ok=True)
    for a in attributes:
        save_model(directory / f"{a}.pt", *concepts[a])
    return directory


def test_cli_end_to_end_on_tiny_models(tmp_path, concepts, capsys):
    d = save_concepts(tmp_path / "concepts", concepts)
    out = tmp_path / "report"
    rc = eval_composition(["--n", "8", "--steps", "3", "--res", "32", "--batch-size", "5", "--concepts", str(d),
                     "--continual", str(d), "--out", str(out), "--seed", str(fresh_seed() % 1000)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Conj(Position, Color)" in printed and "0.801" in printed
    saved = json.loads((out / "results.json").read_text())
    assert [r["key"] for r in saved["rows"]] == [r.key for r in E.TABLE1 + E.TABLE2]
    for r in saved["rows"]:
        assert r["n"] == 8 and all(0.0 <= v <= 1.0 for v in r["metrics"].values())
        assert np.asarray(Image.open(out / f"{r['key']}.png")).shape[2] == 3
    assert (out / "report.md").read_text().count("\n| 2 |") == 6
    assert "color by target:" in printed


def test_cli_realism_keeps_every_sample_and_reports_the_distance(tmp_path, concepts, capsys):
    d = save_concepts(tmp_path / "concepts", concepts)
    out = tmp_path / "report"
    assert eval_composition(["--n", "6", "--steps", "2", "--res", "32", "--batch-size", "4", "--concepts", str(d),
                             "--tables", "1", "--rows", "color", "--realism", "8", "--out", str(out),
                             "--seed", str(fresh_seed() % 1000)]) == 0
    assert "realism" in capsys.readouterr().out
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert set(row["realism"]) == {"fd", "floor", "noise", "scaled"} and row["realism"]["fd"] > 0
    assert "Realism of 6 samples" in (out / "report.md").read_text()


def test_cli_names_missing_concepts(tmp_path, capsys):
    rc = eval_composition(["--n", "2", "--concepts", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "--cond position" in err and str(tmp_path / "none" / "color.pt") in err
    d = save_concepts(tmp_path / "c", tiny_concepts(fresh_seed()))
    rc = eval_composition(["--n", "2", "--concepts", str(d), "--continual", str(tmp_path / "x"),
                     "--out", str(tmp_path / "r")])
    printed = capsys.readouterr()
    assert rc == 2 and "--frozen" in printed.out and "--tables 1" in printed.err
    assert len(printed.err.strip().splitlines()) == 1


def test_sample_cli_writes_a_grid(tmp_path, concepts, capsys):
    d = save_concepts(tmp_path / "c", concepts)
    out = tmp_path / "grid.png"
    rc = sample_cli_main(["shape=sphere & color=red & ~position=(0.5,0.5)", "--n", "6", "--steps", "2",
                          "--concepts", str(d), "--out", str(out), "--ncols", "3", "--batch-size", "4"])
    assert rc == 0 and "6 samples at 32x32, 2 steps of " in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (16 + 2 * (2 * 34 + 2), 2 * (3 * 34 + 2), 3)  # title + 2 rows
    rc = sample_cli_main(["shape=sphere & colr=red", "--concepts", str(d), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "column 16" in err and "unknown attribute 'colr'" in err
    rc = sample_cli_main(["size=0.2", "--concepts", str(d), "--out", str(out)])
    assert rc == 2 and "--cond size" in capsys.readouterr().err


def test_sampling_tools_balance_conjunctions_at_the_starting_noise(concepts, monkeypatch):
    """Off by default (--balance-and turns it on): sample_images balances every conjunction at the
    chains' own starting noise (no extra chain), then samples the balanced expression from it."""
    import argparse

    import ebm_fast.chains as SC
    from ebm_fast.chains import ChainSettings, sample_images
    from ebm_fast.paper.chain_options import add_chain_args, settings_from_args

    p = argparse.ArgumentParser()
    add_chain_args(p)
    assert settings_from_args(p.parse_args([]), concepts).balance_and is False
    assert settings_from_args(p.parse_args(["--balance-and"]), concepts).balance_and is True
    gen = torch.Generator().manual_seed(fresh_seed())
    row = E.ROWS["conj_pos_color"]
    e = E.build_expr(row, concepts, E.draw_targets(row, 5, gen, concepts))
    calls = []

    def spy(expr, x0, *, steps, **kw):
        calls.append((expr, x0.clone(), steps))
        return x0

    monkeypatch.setattr("ebm_fast.sampler.sample", spy)
    seed = fresh_seed() % 1000
    sample_images(e, 5, ChainSettings(steps=3, balance_and=True), 32, seed)
    assert len(calls) == 1 and calls[0][2] == 3
    bal, x0 = calls[0][0], calls[0][1]
    assert isinstance(bal, ef.And) and bal is not e and e.coefs == (1.0, 1.0)
    assert bal.coefs == pytest.approx(ef.balance_conjunctions(e, x0).coefs, rel=1e-6) and max(bal.coefs) == 1.0
    calls.clear()
    sample_images(e, 5, ChainSettings(steps=3), 32, seed)
    assert len(calls) == 1 and calls[0][0] is e and torch.equal(calls[0][1], x0)
    assert SC.balance_conjunctions is ef.balance_conjunctions
