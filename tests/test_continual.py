"""Continual learning: a new concept trained in conjunction with frozen ones (paper §3.3)."""

from __future__ import annotations

import pytest
import torch

import ebm_fast as ef
from ebm_fast.continual import freeze, load_frozen, negatives_expr, param_digest, parse_frozen
from ebm_fast.models import build_model, save_model
from ebm_fast.training import TrainConfig, Trainer, synthetic_data


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cfg(out, **kw):
    base = dict(out=str(out), model="tiny", iterations=3, batch_size=8, langevin_steps=4, replay_capacity=16,
                checkpoint_every=100, image_every=100, log_every=1, progress=False, threads=1, seed=2)
    base.update(kw)
    return TrainConfig(**base)


def test_frozen_models_stay_bit_identical_and_negatives_come_from_the_composition(tmp_path, monkeypatch):
    data = synthetic_data(48, 16, seed=int(torch.randint(0, 1000, (1,))))
    # an earlier concept: position, trained briefly and saved
    Trainer(_cfg(tmp_path / "pos", cond="pos"), data=data).train()
    frozen_spec = f"{tmp_path / 'pos' / 'model.pt'}=position"
    before = param_digest(load_frozen(frozen_spec).model)

    seen = []
    real_sample = ef.sample

    def spy(expr, x0, **kw):
        seen.append(expr)
        return real_sample(expr, x0, **kw)

    monkeypatch.setattr(ef, "sample", spy)
    tr = Trainer(_cfg(tmp_path / "color", cond="color", frozen=(frozen_spec,)), data=data)
    new_before = param_digest(tr.model)
    tr.train()

    frozen = tr.frozen[0]
    assert param_digest(frozen.model) == before == frozen.digest
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.parameters())
    assert param_digest(tr.model) != new_before  # the new concept did learn
    # every chain sampled the conjunction new(color) & frozen(position), each with per-sample labels
    assert len(seen) == 3
    for expr in seen:
        leaves = expr.leaves()
        assert [leaf.model for leaf in leaves] == [tr.model, frozen.model]
        assert all(leaf.per_sample and leaf.cond.shape[0] == 8 for leaf in leaves)
        assert leaves[0].cond.dtype == torch.int64 and leaves[1].cond.shape == (8, 2)
    # the file on disk is untouched too
    assert param_digest(load_frozen(frozen_spec).model) == before


def test_negatives_expr_energy_is_the_sum_of_concepts():
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, (1,))))
    new = build_model("tiny", 3, "onehot").eval()
    old = freeze(build_model("tiny", 2, "continuous"))
    with torch.no_grad():
        for p in list(new.parameters()) + list(old.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.rand(5, 3, 16, 16, generator=g)
    c_new, c_old = torch.randint(0, 3, (5,), generator=g), torch.rand(5, 2, generator=g)
    expr = negatives_expr(new, c_new, [ef.continual.FrozenConcept(old, "pos")], [c_old])
    with torch.no_grad():
        torch.testing.assert_close(expr.energy(x), new(x, c_new) + old(x, c_old))
    with pytest.raises(ValueError, match="expected 1 conditions"):
        negatives_expr(new, c_new, [ef.continual.FrozenConcept(old, "pos")], [])


def test_resume_refuses_a_changed_frozen_model(tmp_path):
    data = synthetic_data(32, 16, seed=1)
    m = build_model("tiny", 2, "continuous")
    save_model(tmp_path / "old.pt", m)
    spec = f"{tmp_path / 'old.pt'}=pos"
    Trainer(_cfg(tmp_path / "run", cond="color", frozen=(spec,), iterations=2, checkpoint_every=1), data=data).train()
    with torch.no_grad():
        next(m.parameters()).add_(1.0)
    save_model(tmp_path / "old.pt", m)
    with pytest.raises(ValueError, match="frozen concept .*old.pt.*changed"):
        Trainer(_cfg(tmp_path / "run", cond="color", frozen=(spec,), iterations=4, resume=True), data=data).train()


def test_parse_frozen():
    assert parse_frozen("runs/a=b/model.pt=position") == ("runs/a=b/model.pt", "position")
    with pytest.raises(ValueError, match="PATH=ATTRIBUTE"):
        parse_frozen("model.pt")
