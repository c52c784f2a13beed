"""The concept models shipped in ebm_fast/paper/assets/concepts: present, small, trained with the recorded
recipe, and reading their condition on scenes they never saw (fresh labels, NumPy renderer, so no GL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_fast.paper.concepts import concept_paths, default_concepts_dir, encode_conditions, generation_caveat, load_concepts
from ebm_fast.paper import scenes as S
from ebm_fast.paper.demo_concepts import ATTRIBUTES, concepts_present
from ebm_fast.chains import chain_settings_of, from_noise_steps, generation_chain

N = 64
SHIPPED = (*ATTRIBUTES, "shape", "size")  # the demo composes position and colour; shape and size are shipped too


def test_shipped_concepts_are_present_small_and_carry_their_recipe():
    assert concepts_present(), f"expected {ATTRIBUTES} models in {default_concepts_dir()}"
    sizes = [p.stat().st_size for p in concept_paths(None, SHIPPED).values()]
    assert sum(sizes) <= 20 * 2**20
    for attribute, (model, meta) in load_concepts(attributes=SHIPPED).items():
        assert meta["cond"] == attribute
        # an ensemble (the colour concept) keeps each trained member's own record
        trained = [m["meta"] for m in meta["members"]] if "members" in meta else [meta]
        assert len(trained) == len(getattr(model, "members", [model]))
        for record in trained:
            tc = record["train_config"]
            assert record["cond"] == attribute and record["step"] > 0
            assert (tc["resolution"], tc["model"], tc["step_size"], tc["noise"]) == (32, "small32", 10.0, 0.005)
        assert not any(p.requires_grad for p in model.parameters())
        # the concepts that do not draw (shape) or barely draw (size) what they read say so in their files
        assert (generation_caveat(meta) is not None) == (attribute in ("shape", "size")), attribute


def test_the_shipped_concepts_agree_on_their_generation_chain():
    """The shipped concepts recommend one chain for sampling from noise; were they to disagree, every
    expression mixing them would silently fall back to the generic defaults."""
    shipped = load_concepts(attributes=SHIPPED)
    assert all(generation_chain(meta) for _, meta in shipped.values())
    own = {a: chain_settings_of({a: c}) for a, c in shipped.items()}  # each file's chain from noise
    assert all(s == own["position"] for s in own.values()), own
    s = chain_settings_of(shipped)
    assert s == own["position"] and s.step_size == generation_chain(shipped["position"][1])["step_size"]
    assert s.steps == from_noise_steps(shipped["position"][1]["train_config"])


# what makes a run of the recipe what it is (not where it writes, how long, or which weights it starts from)
RECIPE_FIELDS = ("resolution", "model", "batch_size", "spectral_norm", "pool", "coords", "alpha", "cond_contrast",
                 "cond_jitter", "cond_reg", "langevin_steps", "step_size", "noise", "sample_grad_clip", "lr",
                 "replay_capacity", "ema")


# The shipped position model is the recipe's step-2000 model trained 1200 steps more without near-miss
# positions (runs/probes/position32_nojitter); the printed command is the recipe, jitter included.
LAST_STAGE_CHANGES = {"position": {"cond_jitter": 0.1}}


def test_the_printed_training_command_remakes_each_shipped_file_and_its_chain():
    """``train_command`` (printed when a concept file is missing): each ``ebm-fast train`` in it parses
    into the recipe its shipped file (or ensemble member) recorded, and an ensemble's ``combine``
    names every member with its shipped weight, the step each was shipped at, and the chain the
    shipped file recommends."""
    import dataclasses
    import shlex

    from ebm_fast.paper.concepts import train_command
    from ebm_fast.training import TrainConfig, config_from_args

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for attribute, (_, meta) in load_concepts(attributes=SHIPPED).items():
        commands = [shlex.split(c) for c in train_command(attribute, "/tmp/out.pt").split(" && ")]
        trains = [c[2:] for c in commands if c[:2] == ["ebm-fast", "train"]]
        members = meta.get("members") or [{"meta": meta}]
        assert len(trains) == len(members), attribute
        for argv, member in zip(trains, members):
            cfg, recorded = config_from_args(argv), member["meta"]["train_config"]
            assert cfg.cond == attribute
            # a field a model file does not record had its default when the model was trained (e.g. cond_reg)
            expected = {f: recorded.get(f, defaults[f]) for f in RECIPE_FIELDS}
            expected = {f: tuple(v) if isinstance(v, list) else v for f, v in expected.items()}
            assert {f: getattr(cfg, f) for f in RECIPE_FIELDS} == {**expected, **LAST_STAGE_CHANGES.get(attribute, {})}
            if "members" in meta:  # the printed run stops at the step that was shipped
                assert cfg.iterations == member["meta"]["step"]
        if "members" in meta:
            combine = commands[-1]
            assert combine[:3] == ["ebm-fast", "models", "combine"] and combine[-2:] == ["--out", "/tmp/out.pt"]
            assert combine.count("--out") == 1 and sum(a.endswith("model.pt") for a in combine) == len(members)
            at = combine.index("--weights")
            assert [float(w) for w in combine[at + 1:at + 1 + len(members)]] == pytest.approx([m["weight"] for m in members])
            chain = generation_chain(meta)
            flags = dict(zip(combine, combine[1:]))  # option -> the token after it
            assert (int(flags["--steps"]), float(flags["--step-size"])) == (chain["steps"], chain["step_size"])


def test_override_flags_replaces_in_place_and_appends_new_options():
    from ebm_fast.paper.concepts import override_flags

    assert override_flags("--a 1 --flag --b 2", "--b 3 --c 4 --other") == "--a 1 --flag --b 3 --c 4 --other"
    assert override_flags("--a 1", "") == "--a 1"
    with pytest.raises(ValueError, match="expected an option at 'x'"):
        override_flags("--a 1 x", "")


def test_shipped_concepts_read_their_condition_on_fresh_scenes():
    """Colour and shape: the true class has the lowest energy of the seven colours / three shapes;
    position: the true position has a lower energy than another scene's; size: the true half-extent
    has a lower energy than one 0.07 m off (inside the range). Chance is 1/7, 1/3, 1/2 and 1/2; the
    shipped models score ~1.0, ~0.99, ~0.9 and ~0.9."""
    concepts = load_concepts(attributes=SHIPPED)
    seed = int(np.random.default_rng().integers(1 << 30))
    labels = S.sample_scene_params(S.SceneConfig(n=N, resolution=32, seed=seed))
    images = S.render_scenes(labels, 32, renderer="numpy", progress=False)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    model, meta = concepts["color"]
    with torch.no_grad():
        energies = torch.stack([model(x, encode_conditions("color", torch.full((N,), k), meta, model))
                                for k in range(len(S.COLOR_NAMES))], 1)
    colour_acc = float((energies.argmin(1).numpy() == labels["color"]).mean())
    model, meta = concepts["shape"]
    with torch.no_grad():
        energies = torch.stack([model(x, encode_conditions("shape", torch.full((N,), k), meta, model))
                                for k in range(len(S.SHAPES))], 1)
    shape_acc = float((energies.argmin(1).numpy() == labels["shape"]).mean())
    model, meta = concepts["position"]
    pos = torch.from_numpy(labels["pos"]).float()
    with torch.no_grad():
        e_true = model(x, encode_conditions("position", pos, meta, model))
        e_other = model(x, encode_conditions("position", pos.roll(1, 0), meta, model))
    position_acc = float((e_true < e_other).float().mean())
    model, meta = concepts["size"]
    size = torch.from_numpy(labels["size"]).float()
    with torch.no_grad():
        e_true = model(x, encode_conditions("size", size, meta, model))
        e_off = model(x, encode_conditions("size", torch.where(size < 0.25, size + 0.07, size - 0.07), meta, model))
    size_acc = float((e_true < e_off).float().mean())
    assert colour_acc >= 0.85, (seed, colour_acc)
    assert shape_acc >= 0.85, (seed, shape_acc)
    assert position_acc >= 0.75, (seed, position_acc)
    assert size_acc >= 0.7, (seed, size_acc)


def test_sampling_a_shape_prints_the_caveat(tmp_path, capsys):
    from ebm_fast.cli.sample import main as sample_cli_main

    assert sample_cli_main(["shape=sphere & color=red", "--n", "2", "--steps", "1", "--threads", "1",
                            "--out", str(tmp_path / "g.png")]) == 0
    err = capsys.readouterr().err
    assert "note: the shape concept" in err and "does not draw it" in err
    assert (tmp_path / "g.png").is_file()
