"""ReplayBuffer: ring storage, draws with probability p, uint8 quantisation, labels, checkpoints."""

from __future__ import annotations

import io
import math
import secrets

import pytest
import torch

import ebm_fast as ef
from ebm_fast.replay import ReplaySample


@pytest.fixture(autouse=True)
def fresh_seed():
    torch.manual_seed(secrets.randbits(62))


def test_add_and_draw_from_buffer_only():
    buf = ef.ReplayBuffer(50, (3, 4))
    x = torch.rand(20, 3, 4)
    buf.add(x)
    assert len(buf) == 20
    out = buf.sample(64, p=1.0)
    assert isinstance(out, ReplaySample) and out.x.shape == (64, 3, 4) and out.from_buffer.all()
    assert ((out.index >= 0) & (out.index < 20)).all()
    torch.testing.assert_close(out.x, x[out.index], rtol=0, atol=0)  # float32 storage is exact


def test_p_zero_and_empty_buffer_give_fresh_uniform_noise_in_range():
    buf = ef.ReplayBuffer(10, (5,), value_range=(-2.0, 3.0))
    for p in (0.0, 0.95):  # empty: fresh whatever p
        out = buf.sample(400, p=p)
        assert not out.from_buffer.any()
        assert out.x.min() >= -2.0 and out.x.max() <= 3.0 and out.x.std() > 1.0
    buf.add(torch.zeros(10, 5))
    out = buf.sample(100, p=0.0)
    assert not out.from_buffer.any() and (out.x != 0).all()


def test_fraction_from_buffer_is_p():
    buf = ef.ReplayBuffer(100, (2,))
    buf.add(torch.full((100, 2), 7.0))
    n, p = 20000, 0.95
    out = buf.sample(n, p=p)
    frac = out.from_buffer.float().mean().item()
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial, 5 SE
    assert torch.equal(out.from_buffer, (out.x == 7.0).all(1))


def test_ring_overwrites_oldest_and_keeps_last_capacity_rows():
    buf = ef.ReplayBuffer(5, (1,))
    buf.add(torch.arange(3.0)[:, None])
    buf.add(torch.arange(3.0, 7.0)[:, None])  # 7 rows into 5 slots: 5, 6 overwrite 0, 1
    assert len(buf) == 5
    assert buf.data[:, 0].tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]
    buf.add(torch.arange(10.0, 22.0)[:, None])  # more rows than capacity: the last 5 are kept
    assert sorted(buf.data[:, 0].tolist()) == [17.0, 18.0, 19.0, 20.0, 21.0]


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_uint8_storage_quantises_within_half_a_level(value_range):
    lo, hi = value_range
    buf = ef.ReplayBuffer(30, (4, 4), dtype=torch.uint8, value_range=value_range)
    x = lo + (hi - lo) * torch.rand(30, 4, 4)
    buf.add(x)
    assert buf.data.dtype == torch.uint8 and buf.state_dtype == torch.float32
    out = buf.sample(30, p=1.0)
    err = (out.x - x[out.index]).abs().max().item()
    assert err <= 0.5 * (hi - lo) / 255 + 1e-6
    assert out.x.dtype == torch.float32


def test_labels_come_from_slots_or_from_the_fresh_rows():
    buf = ef.ReplayBuffer(8, (2,), label_shape=(3,))
    x, lab = torch.rand(8, 2), torch.rand(8, 3)
    buf.add(x, lab)
    fresh_labels = torch.full((500, 3), -1.0)
    out = buf.sample(500, p=0.5, labels=fresh_labels)
    fb = out.from_buffer
    assert fb.any() and (~fb).any()
    torch.testing.assert_close(out.labels[fb], lab[out.index[fb]], rtol=0, atol=0)
    assert (out.labels[~fb] == -1.0).all()
    with pytest.raises(ValueError, match="stores no labels"):
        ef.ReplayBuffer(4, (2,)).add(x[:4], lab[:4])


def test_write_back_to_drawn_slots_and_init_for_fresh_rows():
    buf = ef.ReplayBuffer(6, (2,))
    buf.add(torch.zeros(6, 2))
    out = buf.sample(4, p=0.5, init=torch.full((4, 2), 9.0))
    assert (out.x[~out.from_buffer] == 9.0).all() and (out.x[out.from_buffer] == 0.0).all()
    new = torch.rand(4, 2) + 1.0
    buf.write(out.index, new)
    for i, slot in enumerate(out.index.tolist()):
        assert (buf.data[slot] >= 1.0).all()
    out2 = buf.sample(3, p=0.0, init=lambda n: torch.full((n, 2), -4.0))
    assert (out2.x == -4.0).all()


def test_generator_makes_draws_repeatable():
    buf = ef.ReplayBuffer(40, (3,))
    buf.add(torch.rand(40, 3))
    s = secrets.randbits(60)
    a = buf.sample(16, generator=torch.Generator().manual_seed(s))
    b = buf.sample(16, generator=torch.Generator().manual_seed(s))
    assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    c = buf.sample(16, generator=torch.Generator().manual_seed(s + 1))
    assert not torch.equal(a.index, c.index)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_state_dict_round_trip(dtype):
    buf = ef.ReplayBuffer(12, (2, 2), dtype=dtype, label_shape=(), label_dtype=torch.int64)
    buf.add(torch.rand(9, 2, 2), torch.randint(0, 5, (9,)))
    f = io.BytesIO()
    torch.save(buf.state_dict(), f)
    f.seek(0)
    other = ef.ReplayBuffer(12, (2, 2), dtype=dtype, label_shape=(), label_dtype=torch.int64)
    other.load_state_dict(torch.load(f))
    assert len(other) == 9 and torch.equal(other.data, buf.data) and torch.equal(other.labels, buf.labels)
    other.add(torch.rand(5, 2, 2), torch.zeros(5, dtype=torch.int64))  # the ring position came along
    buf.add(torch.rand(5, 2, 2), torch.zeros(5, dtype=torch.int64))
    assert len(other) == len(buf) == 12
    with pytest.raises(ValueError, match="capacity"):
        ef.ReplayBuffer(13, (2, 2), dtype=dtype, label_shape=(), label_dtype=torch.int64).load_state_dict(
            buf.state_dict())
    with pytest.raises(ValueError, match="dtype"):
        ef.ReplayBuffer(12, (2, 2), dtype=torch.float16 if dtype == torch.uint8 else torch.uint8, label_shape=(),
                        label_dtype=torch.int64).load_state_dict(buf.state_dict())


@pytest.mark.parametrize("make, exc, match", [
    (lambda: ef.ReplayBuffer(0, (2,)), ValueError, "capacity must be"),
    (lambda: ef.ReplayBuffer(4, (2,), dtype=torch.int32), TypeError, "dtype must be"),
    (lambda: ef.ReplayBuffer(4, (2,), value_range=(1.0, 0.0)), ValueError, "value_range"),
    (lambda: ef.ReplayBuffer(4, (2,)).add(torch.rand(3, 3)), ValueError, r"shape \(n, \*\(2,\)\)"),
    (lambda: ef.ReplayBuffer(4, (2,)).sample(3, p=1.5), ValueError, "probability"),
    (lambda: ef.ReplayBuffer(4, (2,)).sample(3, init=torch.rand(2, 2)), ValueError, r"init must give"),
    (lambda: ef.ReplayBuffer(4, (2,)).write(torch.tensor([0]), torch.rand(2, 2)), ValueError, "index must be"),
])
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_drives_persistent_chains():
    """The training loop's use: draw, run a chain, add back."""
    buf = ef.ReplayBuffer(64, (1, 4, 4), dtype=torch.uint8)
    energy = lambda x: 0.5 * (x - 0.25).square().sum((1, 2, 3))  # noqa: E731
    for _ in range(3):
        x0, _, _, _ = buf.sample(16)
        x = ef.langevin(energy, x0, steps=5, step_size=0.2, noise=0.01, clamp=(0.0, 1.0))
        buf.add(x)
    assert len(buf) == 48
    out = buf.sample(48, p=1.0)
    assert (out.x - 0.25).abs().mean() < 0.2  # the stored states moved towards the energy's minimum


# ---- class-conditional draws and states without labels ----------------------------------------------
def _jem_draw(slices: torch.Tensor, y: torch.Tensor, per_class: int) -> torch.Tensor:
    """JEM's conditional draw, written its way: the buffer is one slice of ``per_class`` states per
    class, and row i comes from a uniform slot of class y_i's slice."""
    inds = torch.randint(0, per_class, (y.shape[0],)) + y * per_class
    return slices[inds]


def test_conditional_draws_take_each_row_from_its_class():
    n_classes, per_class = 4, 25
    buf = ef.ReplayBuffer(n_classes * per_class, (3,), label_shape=(), label_dtype=torch.int64)
    y_stored = torch.randperm(n_classes * per_class) % n_classes
    x = torch.rand(n_classes * per_class, 3) + 10.0 * y_stored[:, None]  # a state shows its class
    buf.add(x, y_stored)
    y = torch.randint(0, n_classes, (400,))
    out = buf.sample(400, p=1.0, labels=y, conditional=True)
    assert out.from_buffer.all()
    assert torch.equal(out.labels, y) and torch.equal(y_stored[out.index], y)
    assert torch.equal((out.x[:, 0] // 10).long(), y)  # the same law as JEM's slices: the class's states
    ref = _jem_draw(x[torch.argsort(y_stored, stable=True)], y, per_class)
    assert torch.equal((ref[:, 0] // 10).long(), y)
    # uniform over the class's slots: every slot of class 0 is reachable
    many = buf.sample(4000, p=1.0, labels=torch.zeros(4000, dtype=torch.int64), conditional=True)
    assert set(many.index.tolist()) == set(torch.nonzero(y_stored == 0).flatten().tolist())
    # the unconditional draw ignores the asked labels for buffer rows (the old behaviour, by request)
    plain = buf.sample(400, p=1.0, labels=y)
    assert not torch.equal(plain.labels, y)


def test_conditional_draw_of_a_label_nobody_holds_is_fresh():
    buf = ef.ReplayBuffer(6, (2,), label_shape=(2,))
    buf.add(torch.rand(6, 2) + 5.0, torch.tensor([[1.0, 0.0]]).expand(6, 2))
    asked = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = buf.sample(3, p=1.0, labels=asked, conditional=True)
    assert out.from_buffer.tolist() == [True, False, True]
    assert (out.x[1] < 1.0).all() and torch.equal(out.labels, asked)
    with pytest.raises(ValueError, match="pass labels"):
        buf.sample(3, conditional=True)
    with pytest.raises(ValueError, match="needs a buffer with labels"):
        ef.ReplayBuffer(4, (2,)).sample(2, labels=None, conditional=True)
    empty = ef.ReplayBuffer(4, (2,), label_shape=())
    assert not empty.sample(3, labels=torch.zeros(3), conditional=True).from_buffer.any()


def test_add_without_labels_leaves_slots_unlabelled():
    buf = ef.ReplayBuffer(8, (2,), label_shape=(), label_dtype=torch.int64)
    buf.add(torch.rand(4, 2), torch.tensor([3, 3, 3, 3]))
    buf.add(torch.rand(4, 2) + 5.0)  # no labels: allowed, and never drawn for a class
    assert len(buf) == 8 and buf.labelled.tolist() == [True] * 4 + [False] * 4
    out = buf.sample(200, p=1.0, labels=torch.full((200,), 3), conditional=True)
    assert out.from_buffer.all() and (out.index < 4).all()
    # write() without labels keeps a slot's label; with labels it labels the slot
    buf.write(torch.tensor([0]), torch.rand(1, 2))
    buf.write(torch.tensor([5]), torch.rand(1, 2), torch.tensor([3]))
    assert buf.labelled.tolist() == [True] * 4 + [False, True, False, False]
    again = ef.ReplayBuffer(8, (2,), label_shape=(), label_dtype=torch.int64)
    again.load_state_dict(buf.state_dict())
    assert torch.equal(again.labelled, buf.labelled)
    old = {k: v for k, v in buf.state_dict().items() if k != "labelled"}  # saved before the mask existed
    again.load_state_dict(old)
    assert again.labelled.all()
