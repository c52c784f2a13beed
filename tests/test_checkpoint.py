"""Checkpoint files: atomic writes, weights_only loading, corruption detection and fallback, RNG states."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from ebm_fast.checkpoint import (CheckpointError, CheckpointManager, atomic_torch_save, load_checkpoint_file,
                                 rng_state, set_rng_state)


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"kind": "test", "step": seed, "weights": torch.randn(64, 33, generator=g),
            "config": {"lr": 3e-4, "betas": (0.0, 0.999), "frozen": [], "ema": None, "name": "x"},
            "ints": torch.randint(0, 255, (1000,), generator=g, dtype=torch.uint8)}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k])
        else:
            assert a[k] == b[k]


def test_round_trip_loads_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    st = _state(1)
    atomic_torch_save(st, tmp_path / "a.pt")
    _assert_same(load_checkpoint_file(tmp_path / "a.pt"), st)
    assert calls and all(c is True for c in calls)


def test_saved_files_get_the_usual_permissions_not_mkstemps(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_torch_save(_state(2), tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o640


def test_manager_keeps_two_generations(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt")
    assert mgr.load_latest() is None
    for s in (1, 2, 3):
        mgr.save(_state(s))
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["last.pt", "prev.pt"]  # no temporary files left
    state, path = mgr.load_latest()
    assert path == mgr.last and state["step"] == 3
    assert load_checkpoint_file(mgr.prev)["step"] == 2


def test_truncated_last_falls_back_to_prev_with_a_warning_naming_it(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))
    mgr.save(_state(2))
    data = mgr.last.read_bytes()
    mgr.last.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"last\.pt.*truncated or corrupt"):
        load_checkpoint_file(mgr.last)
    with pytest.warns(RuntimeWarning, match=r"last\.pt.*previous good checkpoint .*prev\.pt"):
        state, path = mgr.load_latest()
    assert path == mgr.prev and state["step"] == 1
    # the next save drops the bad file instead of rotating it over the good one
    mgr.save(_state(3))
    assert load_checkpoint_file(mgr.last)["step"] == 3
    assert load_checkpoint_file(mgr.prev)["step"] == 1


def test_a_valid_file_of_another_kind_as_last_falls_back_to_prev_once(tmp_path):
    """A readable checkpoint that is not the state the caller resumes (e.g. a model file copied over
    last.pt) counts as bad: prev.pt is used, with one warning however often the run reads its checkpoint."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))
    mgr.save(_state(2))
    atomic_torch_save({"kind": "ebm_fast.model", "state_dict": {}}, mgr.last)

    def check(state):
        return None if state.get("kind") == "test" else f"not a test state (kind {state.get('kind')!r})"

    assert mgr.load_latest()[1] == mgr.last  # without a check any good file does
    with pytest.warns(RuntimeWarning) as record:
        for _ in range(3):
            state, path = mgr.load_latest(check=check)
            assert path == mgr.prev and state["step"] == 1
    assert len(record) == 1 and "not a test state" in str(record[0].message)
    assert "previous good checkpoint" in str(record[0].message)
    mgr.last.write_bytes(b"")  # another bad file: news again
    with pytest.warns(RuntimeWarning, match="truncated or corrupt"):
        mgr.load_latest(check=check)
    with pytest.raises(CheckpointError, match="not a test state"):
        CheckpointManager(tmp_path).load_latest(check=lambda st: "not a test state")


def test_orphan_temporaries_of_a_killed_save_are_removed(tmp_path):
    """A process killed while writing leaves a checkpoint-sized .last.pt.*.tmp; the next save (or
    remove_orphans at a run's start) deletes it, and touches nothing else."""
    mgr = CheckpointManager(tmp_path)
    assert mgr.remove_orphans() == []
    mgr.save(_state(1))
    orphans = [tmp_path / f".last.pt.{tag}.tmp" for tag in ("a1b2", "zz_9")]
    for o in orphans:
        o.write_bytes(os.urandom(4096))
    keep = tmp_path / ".other.pt.x.tmp"
    keep.write_bytes(b"x")
    assert sorted(mgr.remove_orphans()) == sorted(orphans)
    for o in orphans:
        o.write_bytes(b"y")
    mgr.save(_state(2))
    assert sorted(os.listdir(tmp_path)) == [".other.pt.x.tmp", "last.pt", "prev.pt"]


def test_flipped_payload_byte_is_caught_by_the_checksum(tmp_path):
    path = atomic_torch_save(_state(4), tmp_path / "a.pt")
    data = bytearray(path.read_bytes())
    # flip a byte inside the stored weights (far from the zip headers at either end)
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"a\.pt"):
        load_checkpoint_file(path)


def test_all_generations_bad_names_every_file(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))
    mgr.save(_state(2))
    mgr.last.write_bytes(b"not a checkpoint")
    mgr.prev.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.pt.*prev\.pt"):
        mgr.load_latest()


def test_foreign_file_is_rejected(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="expected an ebm_fast.checkpoint file"):
        load_checkpoint_file(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint_file(tmp_path / "missing.pt")


def test_crash_during_save_keeps_the_old_file(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))
    before = mgr.last.read_bytes()

    def boom(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk vanished"):
        mgr.save(_state(2))
    monkeypatch.undo()
    assert mgr.last.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.standard_normal()  # leave a cached gaussian around
    atomic_torch_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expect = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    set_rng_state(load_checkpoint_file(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)], random.gauss(0, 1))
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1])
    assert expect[2] == got[2] and expect[3] == got[3]


@pytest.mark.parametrize("crash_at", [0, 1])
def test_last_exists_at_every_instant_of_a_save(tmp_path, monkeypatch, crash_at):
    """A process killed at either rename of a save (prev.pt rotated, new last.pt not yet in place; or
    before either) still leaves a good last.pt: the old one, never a missing file."""
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))
    mgr.save(_state(2))
    real = os.replace
    calls = []

    def replace(src, dst):
        if len(calls) == crash_at:
            raise KeyboardInterrupt  # the process dies here
        calls.append((src, dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(_state(3))
    monkeypatch.undo()
    assert load_checkpoint_file(mgr.last)["step"] == 2
    assert load_checkpoint_file(mgr.prev)["step"] == (2 if crash_at else 1)
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "prev.pt"]
    mgr.save(_state(4))
    assert load_checkpoint_file(mgr.last)["step"] == 4 and load_checkpoint_file(mgr.prev)["step"] == 2


def test_rotation_copies_where_hard_links_are_refused(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(1))

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    mgr.save(_state(2))
    assert load_checkpoint_file(mgr.last)["step"] == 2 and load_checkpoint_file(mgr.prev)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "prev.pt"]
