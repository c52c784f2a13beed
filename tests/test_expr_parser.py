"""Tests for command-line expressions (ebm_fast.paper.expr_parser) and concept conditions (ebm_fast.paper.concepts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ebm_fast as ef
from ebm_fast.paper import concepts as C
from ebm_fast.compose import DEFAULT_NOT_ALPHA, And, Not, Or, Scale
from ebm_fast.paper.scenes import COLOR_NAMES, SHAPES
from ebm_fast.paper.expr_parser import Atom, ExprError, parse, parse_expr, tree_attributes
from ebm_fast.models import FiLM, build_model

RNG = np.random.default_rng()

SPECS = {"position": ("continuous", 2), "color": ("onehot", len(COLOR_NAMES)),
         "shape": ("onehot", len(SHAPES)), "size": ("continuous", 1)}


def tiny_concepts(seed: int, attributes=("position", "color", "shape", "size"), resolution: int = 16) -> dict:
    """``{attribute: (tiny model, meta)}`` with random FiLM weights, so the condition changes the
    energy (FiLM starts at zero: an untrained model would ignore it), and meta as training writes it."""
    torch.manual_seed(seed)
    out = {}
    for a in attributes:
        ctype, dim = SPECS[a]
        model = build_model("tiny", dim, ctype, resolution=resolution)
        for m in model.modules():
            if isinstance(m, FiLM):
                nn.init.normal_(m.linear.weight, std=0.5)
        meta = {"cond": a, "cond_type": ctype, "cond_dim": dim,
                "data": {"source": "scenes", "colors": list(COLOR_NAMES), "shapes": list(SHAPES),
                         "scene_config": {"resolution": resolution}}}
        out[a] = (model.eval(), meta)
    return out


@pytest.fixture(scope="module")
def concepts():
    return tiny_concepts(int(RNG.integers(0, 2**31)))


def onehot(i: int, n: int) -> torch.Tensor:
    v = torch.zeros(n)
    v[i] = 1.0
    return v


def raw(concepts, attr, cond):
    """A leaf built by hand from the model and the raw condition tensor (independent of the encoder)."""
    return ef.Concept(concepts[attr][0], torch.as_tensor(cond, dtype=torch.float32))


def x_random(b=5):
    return torch.rand(b, 3, 16, 16)


# ---- round trips: text -> the same tree and energies as a hand-built expression ---------------------
def hand_built(cs):
    red, sphere, box = COLOR_NAMES.index("red"), SHAPES.index("sphere"), SHAPES.index("box")
    pos = lambda x, y: raw(cs, "position", [x, y])  # noqa: E731
    col = lambda i: raw(cs, "color", onehot(i, len(COLOR_NAMES)))  # noqa: E731
    shp = lambda i: raw(cs, "shape", onehot(i, len(SHAPES)))  # noqa: E731
    return [
        ("shape=sphere & color=red & ~position=(0.5,0.5)",
         And(shp(sphere), col(red), Not(pos(0.5, 0.5)))),
        ("pos=(-0.25, .75) | colour=Blue",
         Or(pos(-0.25, 0.75), col(COLOR_NAMES.index("blue")))),
        ("2.0*shape=cube & ~[0.001]color=red",
         And(Scale(shp(box), 2.0), Not(col(red), alpha=0.001))),
        ("(color=red | color=green) & size=0.25 & position=(1e-1,-1)",
         And(Or(col(red), col(COLOR_NAMES.index("green"))), raw(cs, "size", [0.25]), pos(0.1, -1.0))),
        ("shape=2 & ~(color=0 | position=(0,0))",
         And(shp(2), Not(Or(col(0), pos(0.0, 0.0))))),
    ]


def structure(e):
    """Node types, parameters and leaf conditions, depth first."""
    if isinstance(e, ef.Concept):
        return ("leaf", id(e.model), tuple(e.cond.tolist()), e.per_sample)
    if isinstance(e, Not):
        return ("not", e.alpha, structure(e.term))
    if isinstance(e, Scale):
        return ("scale", e.scale, structure(e.term))
    if isinstance(e, Or):
        return ("or", e.temperature, tuple(structure(t) for t in e.terms))
    return ("and", e.coefs, tuple(structure(t) for t in e.terms))


@pytest.mark.parametrize("case", range(5))
def test_round_trip_matches_hand_built(concepts, case):
    text, expected = hand_built(concepts)[case]
    got = parse_expr(text, concepts)
    assert structure(got) == structure(expected)
    assert [leaf.model for leaf in got.leaves()] == [leaf.model for leaf in expected.leaves()]
    x = x_random()
    torch.testing.assert_close(got.energy(x), expected.energy(x), rtol=0, atol=0)


def test_leaf_conditions_are_the_model_inputs(concepts):
    e = parse_expr("color=purple & shape=cylinder & position=(0.3,-0.6) & size=0.2", concepts)
    conds = [leaf.cond for leaf in e.leaves()]
    torch.testing.assert_close(conds[0], onehot(COLOR_NAMES.index("purple"), len(COLOR_NAMES)))
    torch.testing.assert_close(conds[1], onehot(SHAPES.index("cylinder"), len(SHAPES)))
    torch.testing.assert_close(conds[2], torch.tensor([0.3, -0.6]))
    torch.testing.assert_close(conds[3], torch.tensor([0.2]))
    # the one-hot is what the model makes of the class index training feeds it
    model = concepts["color"][0]
    x = x_random(3)
    idx = torch.full((3,), COLOR_NAMES.index("purple"))
    torch.testing.assert_close(ef.Concept(model, conds[0]).energy(x), model(x, idx))


# ---- precedence and defaults ---------------------------------------------------------------------
def test_precedence_not_over_and_over_or():
    t = parse("color=red | shape=box & ~size=0.2")
    assert t[0] == "or" and isinstance(t[1][0], Atom)
    assert t[1][1][0] == "and" and t[1][1][1][1][0] == "not"
    t = parse("~color=red & shape=box")
    assert t[0] == "and" and t[1][0][0] == "not"          # not ~(a & b)
    t = parse("2*color=red & shape=box")
    assert t[0] == "and" and t[1][0][0] == "scale"        # scale binds its factor only
    t = parse("color=red & shape=box & size=0.1 | pos=(0,0) | pos=(1,1)")
    assert t[0] == "or" and len(t[1]) == 3 and len(t[1][0][1]) == 3   # flat chains


def test_alpha_and_temperature_defaults(concepts):
    e = parse_expr("color=red & ~shape=box", concepts)
    assert e.terms[1].alpha == DEFAULT_NOT_ALPHA
    e = parse_expr("color=red & ~shape=box & ~[0.5]size=0.2", concepts, alpha=0.003)
    assert (e.terms[1].alpha, e.terms[2].alpha) == (0.003, 0.5)
    e = parse_expr("color=red | shape=box", concepts, temperature=0.01)
    assert e.temperature == 0.01


def test_tree_attributes():
    tree = parse("pos=(0,0) & ~(colour=red | 2*shape=box) & weight=3")
    assert tree_attributes(tree) == ["color", "position", "shape"]   # weight: left for build to report


# ---- errors name the problem and its column ------------------------------------------------------
@pytest.mark.parametrize("text,column,fragment", [
    ("color=red &", 12, "end of the expression"),
    ("color red", 7, "'='"),
    ("(color=red", 11, "')'"),
    ("color=red $ shape=box", 11, "unexpected character '$'"),
    ("", 1, "empty"),
    ("position=(0.5 0.5)", 15, "','"),
    ("~[0]color=red", 3, "alpha"),
    ("color=red shape=box", 11, "'&', '|'"),
    ("2 color=red", 3, "'*'"),
    ("& color=red", 1, "attribute=value"),
])
def test_syntax_errors_have_columns(text, column, fragment):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert info.value.column == column
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(info.value).splitlines()[-1].index("^") == column + 1  # caret under the column


@pytest.mark.parametrize("text,column,fragment", [
    ("shape=sphere & weight=3", 16, "unknown attribute 'weight'"),
    ("shape=sphere & color=magenta", 16, "magenta"),
    ("shape=7", 1, "class index in [0, 3)"),
    ("shape=1.5", 1, "class index"),
    ("position=red", 1, "(x, y)"),
    ("size=(1,2)", 1, "shape (B, 1)"),
])
def test_unknown_attribute_or_value(concepts, text, column, fragment):
    with pytest.raises(ExprError) as info:
        parse_expr(text, concepts)
    assert info.value.column == column and fragment in str(info.value)


def test_missing_concept_model_is_named(concepts):
    cs = {k: v for k, v in concepts.items() if k != "shape"}
    with pytest.raises(ExprError, match="no concept model loaded for 'shape'"):
        parse_expr("color=red & shape=box", cs)


# ---- concept sets on disk ------------------------------------------------------------------------
def test_load_concepts_round_trip_and_missing(tmp_path, concepts):
    from ebm_fast.models import save_model

    for a in ("position", "color"):
        save_model(tmp_path / f"{a}.pt", *concepts[a])
    loaded = C.load_concepts(tmp_path, attributes=("pos", "colour"))
    assert sorted(loaded) == ["color", "position"]
    x = x_random(4)
    for a in loaded:
        assert not any(p.requires_grad for p in loaded[a][0].parameters())
        cond = C.encode_conditions(a, [(0.1, 0.2)] * 4 if a == "position" else ["red"] * 4, loaded[a][1])
        torch.testing.assert_close(loaded[a][0](x, cond), concepts[a][0](x, cond))
    with pytest.raises(FileNotFoundError) as info:
        C.load_concepts(tmp_path, attributes=("position", "shape", "size"))
    msg = str(info.value)
    assert "2 missing" in msg and str(tmp_path / "shape.pt") in msg and "--cond shape" in msg
    assert "--cond size" in msg and "position.pt" not in msg   # only the missing files are listed


def test_load_concepts_rejects_wrong_condition_type(tmp_path, concepts):
    from ebm_fast.models import save_model

    save_model(tmp_path / "color.pt", *concepts["position"])   # a continuous model filed as colour
    with pytest.raises(ValueError, match="cond_type 'onehot'"):
        C.load_concepts(tmp_path, attributes=("color",))


def test_class_names_follow_the_model_meta():
    names = list(reversed(COLOR_NAMES))
    meta = {"data": {"colors": names}, "cond_dim": len(names)}
    c = C.encode_conditions("color", ["red", names[0]], meta)
    assert c.argmax(1).tolist() == [names.index("red"), 0]
    assert C.encode_conditions("shape", ["cube"]).argmax(1).tolist() == [SHAPES.index("box")]
    with pytest.raises(ValueError, match="7 classes"):
        C.encode_conditions("color", ["red"], {"cond_dim": 7, "data": {"colors": ["red", "blue"]}})
