"""`ebm-fast models combine`: trained models of one concept saved as one concept file (an ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_fast import cli
from ebm_fast.combine_models import combine_models
from ebm_fast.paper.concepts import load_concepts
from ebm_fast.models import EnergyEnsemble, load_model, save_model
from ebm_fast.chains import ChainSettings, chain_settings_of

from test_expr_parser import tiny_concepts

RNG = np.random.default_rng()
RECIPE = {"langevin_steps": 20, "step_size": 10.0, "noise": 0.005, "sample_grad_clip": 0.01,
          "order": "noise_first", "replay_p": 0.95}


def fresh_seed() -> int:
    return int(RNG.integers(0, 2**31))


def _two_colour_files(tmp_path, k_second: int = 60):
    """Two colour models trained (as their meta says) with different chains, saved as model files."""
    paths = []
    for i, k in enumerate((20, k_second)):
        model, meta = tiny_concepts(fresh_seed(), attributes=("color",))["color"]
        meta = {**meta, "step": 100 * (i + 1), "train_config": {**RECIPE, "langevin_steps": k}}
        if i == 0:
            meta["generation"] = {"chain": {"step_size": 7.5}}
        paths.append(tmp_path / f"color_{i}.pt")
        save_model(paths[-1], model, meta)
    return paths


def _position_on_the_recipe():
    """A tiny position concept whose meta records the recipe's chain and the shipped step 7.5."""
    model, meta = tiny_concepts(fresh_seed(), attributes=("position",))["position"]
    return model, {**meta, "train_config": dict(RECIPE), "generation": {"chain": {"step_size": 7.5}}}


def test_cli_writes_an_ensemble_with_its_members_and_a_full_chain(tmp_path, capsys):
    paths = _two_colour_files(tmp_path)
    out = tmp_path / "concepts" / "color.pt"
    out.parent.mkdir()
    rc = cli.main(["models", "combine", *map(str, paths), "--weights", "0.25", "0.75", "--steps", "321",
                   "--note", "why", "--out", str(out)])
    assert rc == 0 and "0.25 * color_0.pt + 0.75 * color_1.pt" in capsys.readouterr().out
    ens, meta = load_model(out)
    assert isinstance(ens, EnergyEnsemble) and ens.weights == [0.25, 0.75]
    # the first member's chain from noise (K / (1 - p) = 400 steps, its recommended step 7.5), --steps over it
    assert meta["generation"] == {"chain": {"steps": 321, "step_size": 7.5, "noise": 0.005, "grad_clip": 0.01,
                                            "order": "noise_first"}, "chain_note": "why"}
    assert [m["meta"]["step"] for m in meta["members"]] == [100, 200]
    assert meta["members"][1]["meta"]["train_config"]["langevin_steps"] == 60
    members = [load_model(p)[0] for p in paths]
    x, c = torch.rand(5, 3, 16, 16), torch.randint(0, 7, (5,))
    with torch.no_grad():
        torch.testing.assert_close(ens(x, c), 0.25 * members[0](x, c) + 0.75 * members[1](x, c))
    # it loads as the colour concept, and a concept set with it follows its chain (no train_config of its own)
    position = _position_on_the_recipe()
    save_model(out.parent / "position.pt", *position)
    cs = load_concepts(out.parent, attributes=("position", "color"))
    assert isinstance(cs["color"][0], EnergyEnsemble)
    # the two files disagree on the steps (321 against position's 400): the generic defaults
    assert chain_settings_of(cs).steps == ChainSettings().steps


def test_concept_set_follows_an_ensembles_chain_when_it_agrees(tmp_path):
    paths = _two_colour_files(tmp_path)
    ens, meta = combine_models(paths, chain={"steps": 400})
    position = _position_on_the_recipe()
    s = chain_settings_of({"position": position, "color": (ens, meta)})
    assert (s.steps, s.step_size, s.noise) == (400, 7.5, 0.005)
    meta["generation"]["chain"]["steps"] = 1200  # the ensemble disagrees: the generic defaults
    assert chain_settings_of({"position": position, "color": (ens, meta)}).steps == ChainSettings().steps


@pytest.mark.parametrize("bad,match", [
    ("one", r"at least 2 model files"),
    ("attribute", r"one cond across"),
    ("classes", r"same class names"),
    ("chain", r"unknown fields \['stepsize'\]"),
])
def test_bad_combinations_are_named(tmp_path, bad, match):
    paths = _two_colour_files(tmp_path)
    chain = None
    if bad == "one":
        paths = paths[:1]
    elif bad == "attribute":
        save_model(paths[1], *tiny_concepts(fresh_seed(), attributes=("shape",))["shape"])
    elif bad == "classes":
        model, meta = load_model(paths[1])
        meta["data"]["colors"] = meta["data"]["colors"][::-1]
        save_model(paths[1], model, meta)
    else:
        chain = {"stepsize": 1.0}
    with pytest.raises(ValueError, match=match):
        combine_models(paths, chain=chain)


def test_cli_error_exits_2(tmp_path, capsys):
    paths = _two_colour_files(tmp_path)
    rc = cli.main(["models", "combine", str(paths[0]), str(paths[1]), "--weights", "1", "--out", str(tmp_path / "x.pt")])
    assert rc == 2 and "one per member" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
