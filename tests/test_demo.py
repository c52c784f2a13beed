"""``ebm-fast demo`` (both modes), the released-code chain it times against, and chain settings that
follow the concepts' training recipe."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ebm_fast as ef
from ebm_fast import chains
from ebm_fast.paper import demo, demo_concepts
from ebm_fast.models import save_model
from ebm_fast.released_loop import released_code_chain
from ebm_fast.chains import ChainSettings, chain_settings_of
from ebm_fast.cli.demo import main as demo_main
from test_expr_parser import tiny_concepts

RNG = np.random.default_rng()


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


def _save(directory, concepts, train_config=None):
    directory.mkdir(parents=True, exist_ok=True)
    for a in demo_concepts.ATTRIBUTES:
        model, meta = concepts[a]
        save_model(directory / f"{a}.pt", model, {**meta, **({"train_config": train_config} if train_config else {})})
    return directory


def test_concept_demo_end_to_end_on_tiny_models(tmp_path, capsys, monkeypatch):
    """The demo's four expressions are sampled, judged, gridded and timed (tiny untrained models, so
    the accuracies are meaningless; the chain follows the models' recorded training chain, and every
    expression gets the --alpha and --temperature given)."""
    from ebm_fast.paper import evaluate

    built, real_build = [], evaluate.build_expr

    def spy(row, concepts, targets, **kw):
        built.append((row.key, kw))
        return real_build(row, concepts, targets, **kw)

    monkeypatch.setattr(evaluate, "build_expr", spy)
    balanced, real_balance = [], chains.balance_conjunctions

    def balance_spy(expr, x):
        balanced.append(expr)
        return real_balance(expr, x)

    monkeypatch.setattr(chains, "balance_conjunctions", balance_spy)
    recipe = {"langevin_steps": 2, "step_size": 50.0, "noise": 0.001, "sample_grad_clip": None, "order": "noise_first"}
    d = _save(tmp_path / "concepts", tiny_concepts(fresh_seed(), resolution=32), recipe)
    assert demo_concepts.concepts_present(d) and not demo_concepts.concepts_present(tmp_path)
    out = tmp_path / "demo"
    rc = demo_main(["--concepts", str(d), "--n", "6", "--batch-size", "4", "--out", str(out),
                        "--seed", str(fresh_seed() % 1000), "--threads", "1", "--temperature", "0.3",
                        "--alpha", "0.05"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert list(dict.fromkeys(k for k, _ in built)) == [row.key for _, row in demo_concepts.DEMO_ROWS]
    assert all(kw == {"alpha": 0.05, "temperature": 0.3} for _, kw in built)
    for name, row in demo_concepts.DEMO_ROWS:
        assert name in printed and row.label in printed
        im = np.asarray(Image.open(out / f"{row.key}.png"))
        # title strip + one row of six 32x32 tiles + a caption line per target under each tile
        assert im.shape[0] == 16 + 2 * (34 + 2) + 11 * len(row.terms) + 2
    assert "6 samples per expression, Langevin chains of 2 steps of 50, noise " in printed and ", no clip" in printed
    assert "speed on the AND chain (6 samples x 2 steps): released-code loop" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["info"]["steps"] == 2 and saved["info"]["step_size"] == 50.0 and saved["info"]["grad_clip"] is None
    assert (saved["info"]["alpha"], saved["info"]["temperature"]) == (0.05, 0.3)
    assert [r["key"] for r in saved["rows"]] == [row.key for _, row in demo_concepts.DEMO_ROWS]
    nested = saved["rows"][-1]["metrics"]
    assert set(nested) == {"position 1", "position 2", "color"}
    # conjunctions are balanced by default: once per batch sampled (n = 6 in two batches of at most
    # four chains, per row), and not in the timed chains
    assert saved["info"]["balance_and"] is True and "conjunctions balanced" in printed
    assert len(balanced) == 2 * len(demo_concepts.DEMO_ROWS)
    balanced.clear()
    assert demo_main(["--concepts", str(d), "--n", "2", "--batch-size", "2", "--out", str(tmp_path / "plain"),
                          "--threads", "1", "--no-balance-and"]) == 0
    assert not balanced and "conjunctions as the plain sum" in capsys.readouterr().out
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["info"]["balance_and"] is False


def test_demo_falls_back_to_the_gaussian_demo_and_names_a_bad_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_concepts, "concept_paths",
                        lambda directory, attrs: {a: tmp_path / "none" / f"{a}.pt" for a in attrs})
    rc = demo_main(["--batch", "1024", "--out", str(tmp_path / "g"), "--seed", str(fresh_seed() % 1000)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "no trained concepts found" in printed and "all expressions match their closed form" in printed
    assert (tmp_path / "g" / "A___B.png").is_file()
    rc = demo_main(["--concepts", str(tmp_path / "missing"), "--out", str(tmp_path / "g")])
    assert rc == 2 and "expected position.pt and color.pt" in capsys.readouterr().err


def test_chain_settings_follow_the_concepts_recipe():
    cs = tiny_concepts(fresh_seed(), attributes=("position", "color"))
    recipe = {"langevin_steps": 40, "step_size": 1000.0, "noise": 0.001, "sample_grad_clip": 0.01,
              "order": "noise_first"}
    for a in cs:
        cs[a][1]["train_config"] = dict(recipe)
    s = chain_settings_of(cs)  # no replay recorded: chains from noise as long as the training's K
    assert (s.steps, s.step_size, s.noise, s.grad_clip, s.order) == (40, 1000.0, 0.001, 0.01, "noise_first")
    assert chain_settings_of(cs, steps=7, batch_size=3).steps == 7
    for a in cs:  # a replay buffer with p = 0.95: the training's chains averaged K / (1 - p) steps
        cs[a][1]["train_config"]["replay_p"] = 0.95
    assert chain_settings_of(cs).steps == 800
    cs["color"][1]["train_config"]["replay_p"] = 0.0  # they disagree on the chain length: the defaults
    assert chain_settings_of(cs).steps == ChainSettings().steps
    cs["color"][1]["train_config"]["replay_p"] = 0.95
    cs["color"][1]["train_config"]["step_size"] = 100.0  # they disagree on the step: its generic default
    d = ChainSettings()
    assert chain_settings_of(cs).step_size == d.step_size and chain_settings_of(None).steps == d.steps
    assert (chain_settings_of(cs).steps, chain_settings_of(cs).noise) == (800, 0.001)  # the fields they agree on
    # a file's recommended generation chain replaces those fields of its training chain
    for a in cs:
        cs[a][1]["generation"] = {"chain": {"step_size": 7.5}}
    s = chain_settings_of(cs)
    assert (s.steps, s.step_size, s.noise) == (800, 7.5, 0.001)
    assert chain_settings_of(cs, step_size=3.0).step_size == 3.0
    cs["color"][1]["generation"] = {"chain": {"step_size": 5.0}}  # they disagree: the generic defaults
    assert chain_settings_of(cs).step_size == d.step_size
    cs["color"][1]["generation"] = {"chain": {"stepsize": 5.0}}
    with pytest.raises(ValueError, match=r"unknown fields \['stepsize'\]"):
        chain_settings_of(cs)


def test_the_cli_names_concepts_whose_chains_disagree(capsys):
    from ebm_fast.paper.chain_options import add_chain_args, settings_from_args

    p = argparse.ArgumentParser()
    add_chain_args(p)
    cs = tiny_concepts(fresh_seed(), attributes=("position", "color"))
    recipe = {"langevin_steps": 40, "step_size": 10.0, "noise": 0.005, "sample_grad_clip": 0.01, "order": "noise_first"}
    for a in cs:
        cs[a][1]["train_config"] = dict(recipe)
    assert settings_from_args(p.parse_args([]), cs).steps == 40 and capsys.readouterr().err == ""
    cs["color"][1]["train_config"]["step_size"] = 7.5
    assert settings_from_args(p.parse_args(["--steps", "9"]), cs).step_size == ChainSettings().step_size
    err = capsys.readouterr().err
    assert "disagree on step_size (" in err and "color: steps 40, step_size 7.5" in err
    assert "position: steps 40, step_size 10.0" in err
    assert err.rstrip().endswith(f"(step_size {ChainSettings().step_size})")
    # the one field they disagree on is given: the rest still follow the concepts, and nothing is said
    s = settings_from_args(p.parse_args(["--step-size", "3"]), cs)
    assert (s.steps, s.step_size, s.noise) == (40, 3.0, 0.005) and capsys.readouterr().err == ""
    del cs["color"][1]["train_config"]
    settings_from_args(p.parse_args([]), cs)
    assert "color: none recorded" in capsys.readouterr().err


@pytest.mark.parametrize("order,clamp,clip", [("noise_first", (0.0, 1.0), 0.05), ("ula", None, None)])
def test_released_code_chain_equals_the_fused_sampler_without_noise(order, clamp, clip):
    """With noise 0 the research loop and ebm_fast.sample take the same steps (float64 energies)."""
    gen = torch.Generator().manual_seed(fresh_seed())
    model = demo.GaussianConcept(sigma=0.7)
    means = torch.rand(3, 2, generator=gen, dtype=torch.float64)
    a, b, c = (ef.Concept(model, m) for m in means)
    expr = (a | b) & ef.Not(c, alpha=0.2)
    x0 = torch.rand(64, 2, generator=gen, dtype=torch.float64)
    ours = ef.sample(expr, x0, steps=25, step_size=0.05, noise=0.0, order=order, clamp=clamp, grad_clip=clip,
                     backend="torch")
    ref = released_code_chain(expr, x0, steps=25, step_size=0.05, noise=0.0, order=order, clamp=clamp,
                              grad_clip=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ref - x0).abs().max() > 0.01  # the chain moved
    with pytest.raises(ValueError, match="order"):
        released_code_chain(expr, x0, steps=1, step_size=0.1, noise=0.0, order="leapfrog")
