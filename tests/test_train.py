"""Training: a small model learns; resume is bit-exact (in process and after a SIGKILL); bad checkpoints and
configs are handled; the CLI reads .npz data."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ebm_fast.checkpoint import load_checkpoint_file
from ebm_fast.cli.train import main as cli_main
from ebm_fast.training import ConditionalData, TrainConfig, Trainer, config_from_args, load_data, synthetic_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_threads():
    """Trainer(config.threads=...) sets torch's thread count process-wide; put it back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _small(out, **kw) -> TrainConfig:
    base = dict(out=str(out), model="tiny", cond="pos", iterations=4, batch_size=8, langevin_steps=5,
                replay_capacity=24, checkpoint_every=2, log_every=1, image_every=2, progress=False, threads=1,
                seed=3, ema=0.9, grad_clip=1.0, replay_p=0.7, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _full_state(tr: Trainer) -> dict:
    return {"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "opt": tr.optimizer.state_dict()["state"],
            "replay": tr.replay.data, "replay_labels": tr.replay.labels, "step": tr.step_count}


def _assert_bit_identical(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {float((a.float() - b.float()).abs().max())})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_bit_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_bit_identical(u, v, f"{where}[{i}]")
    else:
        assert a == b, where


# ---- learning ---------------------------------------------------------------------------------------
def test_small_model_learns_the_data(tmp_path):
    """tiny model, 16x16 synthetic squares, 60 iterations, K = 15 (~20 s on the 2-core CI machine).

    Measured over seeds 0..5 (this config, 1 thread): the gap E(x-) - E(x+) peaks at 0.052..0.151 in the
    first half (the data gets the lower energy) and its mean over the last 10 iterations is within
    0.35x of that peak (|-0.033| / 0.094 at worst); the negatives' mean pixel falls from ~0.5 (uniform
    noise) to 0.176..0.241 (data: 0.169).
    """
    seed = int(torch.randint(0, 6, (1,)))
    data = synthetic_data(256, 16, seed)
    cfg = _small(tmp_path, cond="color", iterations=60, batch_size=32, langevin_steps=15, replay_capacity=1000,
                 checkpoint_every=1000, image_every=1000, ema=None, grad_clip=None, replay_p=0.95, seed=seed)
    Trainer(cfg, data=data).train()
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    final = recs[-1]
    recs = [r for r in recs if not r.get("final")]
    assert [r["step"] for r in recs] == list(range(1, 61))
    gap = np.array([r["e_neg"] - r["e_pos"] for r in recs])
    neg_mean = np.array([r["neg_mean"] for r in recs])
    data_mean = recs[0]["pos_mean"]
    peak = gap[:30].max()
    assert peak > 0.025, f"seed {seed}: the data never got lower energy than the negatives (gaps {gap.round(3)})"
    assert abs(gap[-10:].mean()) < 0.5 * peak, f"seed {seed}: gap did not close (peak {peak:.3f}, last {gap[-10:]})"
    assert neg_mean[0] > 0.4
    moved = (0.5 - neg_mean[-10:].mean()) / (0.5 - data_mean)
    assert moved > 0.6, f"seed {seed}: negatives' mean {neg_mean[-10:].mean():.3f} moved {moved:.2f} of the way to {data_mean:.3f}"
    assert np.isfinite(final["loss"]) and (tmp_path / "model.pt").is_file()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[-1] == "neg_000060.png"


# ---- resume ---------------------------------------------------------------------------------------------
def test_resume_in_process_is_bit_exact(tmp_path):
    data = synthetic_data(64, 16, 1)
    straight = Trainer(_small(tmp_path / "a", iterations=6), data=data)
    straight.train()
    first = Trainer(_small(tmp_path / "b", iterations=2), data=data)
    first.train()
    del first
    second = Trainer(_small(tmp_path / "b", iterations=6, resume=True), data=data)
    second.train()
    _assert_bit_identical(_full_state(straight), _full_state(second), "state")
    # the resumed log has one line per step: nothing duplicated, nothing lost
    steps = [json.loads(x).get("step") for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps[:-1] == list(range(1, 7))


def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path):
    data = synthetic_data(64, 16, 2)
    straight = Trainer(_small(tmp_path / "a", iterations=6), data=data)
    straight.train()
    Trainer(_small(tmp_path / "b", iterations=4), data=data).train()  # ckpt: last = step 4, prev = step 2
    last = tmp_path / "b" / "ckpt" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed = Trainer(_small(tmp_path / "b", iterations=6, resume=True), data=data)
    with pytest.warns(RuntimeWarning, match=r"last\.pt.*truncated or corrupt.*prev\.pt"):
        resumed.train()
    _assert_bit_identical(_full_state(straight), _full_state(resumed), "state")


def test_resume_rejects_a_changed_config_and_fresh_runs_refuse_to_overwrite(tmp_path):
    data = synthetic_data(32, 16, 0)
    Trainer(_small(tmp_path, iterations=2), data=data).train()
    with pytest.raises(FileExistsError, match="resume"):
        Trainer(_small(tmp_path, iterations=4), data=data).train()
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        Trainer(_small(tmp_path, iterations=4, lr=1e-3, resume=True), data=data).train()


def _write_npz(path: Path, n=64, res=16, seed=5) -> ConditionalData:
    d = synthetic_data(n, res, seed)
    np.savez(path, images=d.images.permute(0, 2, 3, 1).numpy(), label_pos=d.labels["pos"].numpy(),
             label_color=d.labels["color"].numpy())
    return d


def _cli_args(out, data, iterations, *extra):
    return ["--out", str(out), "--data", str(data), "--cond", "position", "--model", "tiny",
            "--iterations", str(iterations), "--batch-size", "8", "--langevin-steps", "5", "--replay-capacity", "24",
            "--checkpoint-every", "2", "--log-every", "1", "--image-every", "100", "--threads", "1",
            "--no-progress", "--seed", "7", "--ema", "0.9", "--device", "cpu", *extra]


def test_kill_and_resume_through_the_cli_is_bit_exact(tmp_path, capsys):
    """Run the CLI in a subprocess, SIGKILL it mid-run, resume: the same weights as an uninterrupted run."""
    npz = tmp_path / "data.npz"
    _write_npz(npz)
    assert cli_main(_cli_args(tmp_path / "a", npz, 10)) == 0
    assert '"step": 10' in capsys.readouterr().out

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "ebm_fast.cli", "train", *_cli_args(tmp_path / "b", npz, 10)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "b" / "log.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill once step 5 is logged: between checkpoints 4 and 6
            if log.exists() and any(json.loads(x).get("step", 0) >= 5 for x in log.read_text().splitlines() if x):
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the training subprocess did not reach step 5 in 120 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint_file(tmp_path / "b" / "ckpt" / "last.pt")["step"]
    assert 4 <= killed_at < 10

    assert cli_main(_cli_args(tmp_path / "b", npz, 10, "--resume")) == 0
    a = load_checkpoint_file(tmp_path / "a" / "ckpt" / "last.pt")
    b = load_checkpoint_file(tmp_path / "b" / "ckpt" / "last.pt")
    for key in ("model", "ema", "optimizer", "ranks"):
        _assert_bit_identical(a[key], b[key], key)


def test_resume_skips_a_valid_non_training_last_pt_and_cleans_orphans(tmp_path, capsys):
    """A model file copied over ckpt/last.pt is a valid checkpoint file but no training state: resume falls
    back to prev.pt with one warning (the run reads its checkpoint twice: config, then state) instead of a
    KeyError; a checkpoint-sized temporary left by a kill during a save is removed at the start."""
    import shutil

    npz = tmp_path / "data.npz"
    _write_npz(npz)
    run = tmp_path / "r"
    assert cli_main(_cli_args(run, npz, 4)) == 0  # checkpoints at steps 2 and 4
    shutil.copy(run / "model.pt", run / "ckpt" / "last.pt")
    orphan = run / "ckpt" / ".last.pt.k1ll.tmp"
    orphan.write_bytes(os.urandom(1 << 16))
    capsys.readouterr()
    with pytest.warns(RuntimeWarning) as record:
        assert cli_main(_cli_args(run, npz, 6, "--resume")) == 0
    fallbacks = [w for w in record if "previous good checkpoint" in str(w.message)]
    assert len(fallbacks) == 1 and "not a training checkpoint" in str(fallbacks[0].message), record
    assert '"step": 6' in capsys.readouterr().out
    assert not orphan.exists()
    assert load_checkpoint_file(run / "ckpt" / "last.pt")["step"] == 6


def test_every_config_field_is_one_generated_option_with_its_help():
    """The train options come from TrainConfig's fields: one option per field, its help from the field,
    unset options leave the defaults, and the fields a resume may change are marked on the fields."""
    import argparse
    import dataclasses

    from ebm_fast.training import RESUME_OVERRIDABLE
    from ebm_fast.training.options import train_parser

    p = train_parser()
    by_dest = {a.dest: a for a in p._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(by_dest) == set(fields)
    for name, action in by_dest.items():
        assert action.help and action.help.startswith(fields[name].metadata["help"][:20]), name
        assert action.default is argparse.SUPPRESS, name
    assert config_from_args([]) == TrainConfig()
    assert set(RESUME_OVERRIDABLE) == {
        "iterations", "log_every", "image_every", "checkpoint_every", "export_every", "progress", "threads", "device",
        "resume", "compile", "backend", "out", "cond_contrast", "cond_jitter", "cond_reg", "cond_adv",
        "cond_adv_steps", "init_from", "max_minutes"}
    cfg = config_from_args(["--no-spectral-norm", "--compile", "--shapes", "box", "sphere", "--ema", "none",
                            "--threads", "3", "--objective", "cd"])
    assert (cfg.spectral_norm, cfg.compile, cfg.shapes, cfg.ema, cfg.threads) == (False, True, ("box", "sphere"),
                                                                                  None, 3)
    assert config_from_args(["--compile", "--no-compile"]).compile is False


def test_npz_data_and_cli_config(tmp_path):
    npz = tmp_path / "d.npz"
    ref = _write_npz(npz, n=40)
    cfg = config_from_args(_cli_args(tmp_path / "o", npz, 3, "--grad-clip", "none", "--betas", "0.5", "0.9"))
    assert cfg.grad_clip is None and cfg.betas == (0.5, 0.9) and cfg.cond == "position" and cfg.ema == 0.9
    adv = config_from_args(_cli_args(tmp_path / "o", npz, 3, "--cond-contrast", "2", "--cond-adv", "0.03",
                                     "--cond-adv-steps", "5"))
    assert (adv.cond_contrast, adv.cond_adv, adv.cond_adv_steps) == (2.0, 0.03, 5) and cfg.cond_adv_steps == 1
    data = load_data(cfg)
    assert torch.equal(data.images, ref.images) and torch.equal(data.labels["pos"], ref.labels["pos"])
    assert data.specs == {"pos": ("continuous", 2), "color": ("onehot", 3)}
    assert data.attribute("position") == ("pos", "continuous", 2)
    with pytest.raises(ValueError, match="cond: expected one of"):
        data.attribute("texture")
    with pytest.raises(ValueError, match="no such file"):
        load_data(TrainConfig(data=str(tmp_path / "missing.npz")))


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 0, "batch_size: expected an integer > 0"),
    ("replay_p", 1.5, "replay_p"),
    ("ema", 1.0, "ema: expected a decay"),
    ("model", "huge", "model: expected one of"),
    ("order", "backwards", "order"),
    ("betas", (0.0, 1.0), "betas"),
    ("pool", "median", "pool: expected one of"),
    ("cond_contrast", -1.0, "cond_contrast"),
    ("cond_reg", -1.0, "cond_reg"),
])
def test_bad_config_is_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


@pytest.mark.slow
def test_conditioning_is_learned(tmp_path):
    """300 iterations (~1-2 min): negatives conditioned on colour k show colour k.

    Measured (seeds 0, 1): the negatives' own-colour channel exceeds the other two by 0.189 / 0.166 on
    average (data: 0.200; uniform noise: 0).
    """
    seed = int(torch.randint(0, 2, (1,)))
    data = synthetic_data(256, 16, seed)
    cfg = _small(tmp_path, cond="color", iterations=300, batch_size=32, langevin_steps=15, replay_capacity=1000,
                 checkpoint_every=1000, image_every=1000, log_every=50, ema=None, grad_clip=None, replay_p=0.95,
                 seed=seed)
    tr = Trainer(cfg, data=data)
    tr.train()
    x, (color,) = tr.last_negatives, tr.last_negative_conds
    channel = x.mean(dim=(2, 3))
    own = channel[torch.arange(len(color)), color]
    excess = float((own - (channel.sum(1) - own) / 2).mean())
    assert excess > 0.1, f"seed {seed}: own-colour excess {excess:.3f} (data 0.200)"


def test_export_command_writes_the_checkpoint_model_without_training(tmp_path, capsys):
    """``ebm-fast export RUN PATH`` writes the checkpoint's EMA weights as a loadable model and trains nothing."""
    from ebm_fast.cli.export import main as export
    from ebm_fast.models import load_model

    npz = tmp_path / "data.npz"
    _write_npz(npz)
    assert cli_main(_cli_args(tmp_path / "r", npz, 4)) == 0
    ckpt = load_checkpoint_file(tmp_path / "r" / "ckpt" / "last.pt")
    assert export([str(tmp_path / "none"), str(tmp_path / "x.pt")]) == 2
    assert export([str(tmp_path / "r"), str(tmp_path / "m.pt")]) == 0
    assert "step 4" in capsys.readouterr().out
    model, meta = load_model(tmp_path / "m.pt")
    assert meta["step"] == 4
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][name]), name
    assert load_checkpoint_file(tmp_path / "r" / "ckpt" / "last.pt")["step"] == 4  # nothing trained


def test_condition_accuracy_is_a_brute_force_pairwise_count_and_touches_nothing(tmp_path):
    """cond_acc in the log equals a per-image count of E(x|c_i) < E(x|c_{i+1}); logging it every
    iteration leaves the run bit-identical to one that logs rarely (no RNG drawn, no state changed)."""
    data = synthetic_data(64, 16, int(torch.randint(0, 100, (1,))))
    often = Trainer(_small(tmp_path / "often", cond="color", iterations=5, log_every=1), data=data)
    often.train()
    rarely = Trainer(_small(tmp_path / "rarely", cond="color", iterations=5, log_every=100), data=data)
    rarely.train()
    _assert_bit_identical(_full_state(often), _full_state(rarely), "state")
    recs = [json.loads(x) for x in (tmp_path / "often" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["cond_acc"] <= 1.0 for r in recs if not r.get("final"))

    x, c = often.last_positives, often.last_positive_cond
    model = often.model
    for film in (m for m in model.modules() if m.__class__.__name__ == "FiLM"):  # no near-ties
        torch.nn.init.normal_(film.linear.weight, std=0.5)
    got = often.condition_accuracy()
    model.eval()
    wins, count = 0, 0
    with torch.no_grad():
        for i in range(x.shape[0]):
            j = (i - 1) % x.shape[0]  # roll(1): image i is paired with the condition of image i - 1
            if torch.equal(c[i], c[j]):
                continue
            right = model(x[i:i + 1], c[i:i + 1])
            wrong = model(x[i:i + 1], c[j:j + 1])
            wins += int(right.item() < wrong.item())
            count += 1
    expected = wins / count if count else None
    assert (got is None and expected is None) or abs(got - expected) < 1e-6


def test_roughness_is_the_mean_deviation_from_the_local_mean_and_is_logged(tmp_path):
    """roughness against a brute-force 3x3 neighbourhood loop (edges average their in-image neighbours);
    uniform noise scores ~0.23 and a constant image ~0 (float32 rounding); both sides are logged."""
    from ebm_fast.training import roughness

    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    x = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    total, count = 0.0, 0
    for b in range(2):
        for c in range(3):
            for i in range(5):
                for j in range(6):
                    nb = x[b, c, max(0, i - 1):i + 2, max(0, j - 1):j + 2]
                    total += abs(float(x[b, c, i, j]) - float(nb.mean()))
                    count += 1
    assert abs(roughness(x) - total / count) < 1e-6
    assert roughness(torch.full((1, 3, 8, 8), 0.4)) < 1e-6
    assert 0.2 < roughness(torch.rand(4, 3, 32, 32, generator=gen)) < 0.26

    Trainer(_small(tmp_path, cond="color", iterations=2), data=synthetic_data(32, 16, 0)).train()
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert rec["neg_roughness"] > 0 and rec["pos_roughness"] >= 0


def test_export_every_keeps_the_ema_model_of_each_nth_step(tmp_path):
    """--export-every N writes models/model_<step>.pt, the EMA weights at that step (the last one is
    the run's model.pt), each loadable by load_model and carrying its step; 0 (default) writes none."""
    from ebm_fast.models import load_model

    tr = Trainer(_small(tmp_path / "run", cond="color", iterations=4, export_every=2), data=synthetic_data(32, 16, 0))
    ema_at = {}
    step = tr.step

    def step_and_remember():
        stats = step()
        ema_at[tr.step_count] = {k: v.clone() for k, v in tr.ema.state_dict().items()}
        return stats

    tr.step = step_and_remember
    tr.train()
    files = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())
    assert files == ["model_000002.pt", "model_000004.pt"]
    for s in (2, 4):
        model, meta = load_model(tmp_path / "run" / "models" / f"model_{s:06d}.pt")
        assert meta["step"] == s and meta["train_config"]["export_every"] == 2
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema_at[s][k]), (s, k)
    assert any(not torch.equal(ema_at[2][k], ema_at[4][k]) for k in ema_at[4])
    final, _ = load_model(tmp_path / "run" / "model.pt")
    assert all(torch.equal(v, ema_at[4][k]) for k, v in final.state_dict().items())
    Trainer(_small(tmp_path / "off", cond="color", iterations=2), data=synthetic_data(32, 16, 0)).train()
    assert not (tmp_path / "off" / "models").exists()
    with pytest.raises(ValueError, match="export_every"):
        TrainConfig(export_every=-1)


def test_log_lines_reach_a_log_file_replaced_while_the_run_goes_on(tmp_path):
    """A log.jsonl replaced mid-run by another file (a checkout, a copy put back) keeps receiving the
    run's lines: each line is appended by path, not through a handle that would still point at the
    unlinked old file."""
    import os

    tr = Trainer(_small(tmp_path, cond="color", iterations=4, log_every=1), data=synthetic_data(32, 16, 0))
    step = tr.step

    def step_then_replace_log():
        stats = step()
        if tr.step_count == 2:  # line 1 is written; put a copy of the file in its place
            log = tmp_path / "log.jsonl"
            (tmp_path / "copy.jsonl").write_text(log.read_text())
            os.replace(tmp_path / "copy.jsonl", log)
        return stats

    tr.step = step_then_replace_log
    tr.train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4]  # the last line is the final summary


def test_cond_contrast_term_is_the_logistic_ranking_of_right_against_wrong_conditions(tmp_path):
    """cond_loss equals a per-image loop of softplus(E(x|c) - E(x|c~)) over the pairs whose labels
    differ, with c~ drawn from the run's generator (another class; another image's position); the
    term moves the loss by cond_contrast * cond_loss (plus cond_reg * mean E(x|c~)^2 over the same pairs,
    logged as e_wrong's square), and it is off (nothing drawn) by default."""
    import copy

    seed = int(torch.randint(0, 2**31, (1,)))
    for cond in ("color", "pos"):
        data = synthetic_data(64, 16, seed % 1000)
        tr = Trainer(_small(tmp_path / cond, cond=cond, cond_contrast=0.7, cond_reg=0.3, seed=seed % 97,
                                spectral_norm=False), data=data)  # SN would step its power iteration per call
        for film in (m for m in tr.model.modules() if m.__class__.__name__ == "FiLM"):  # the condition matters
            torch.nn.init.normal_(film.linear.weight, std=0.5)
        idx = torch.randint(0, len(data), (8,))
        x_pos, (c_pos,) = data.batch(idx, tr.cond_names)
        x_neg = torch.rand_like(x_pos)
        before = copy.deepcopy(tr.model).train()
        gen_state = tr.gen.get_state()
        stats = tr.update(x_pos, x_neg, c_pos, c_pos)

        tr.gen.set_state(gen_state)
        wrong = tr.mismatched_conditions(c_pos)
        if cond == "color":
            assert bool((wrong != c_pos).all()) and int(wrong.min()) >= 0 and int(wrong.max()) < 3
        else:  # a permutation of the batch's positions
            assert sorted(map(tuple, wrong.tolist())) == sorted(map(tuple, c_pos.tolist()))
        total, count, wrong_e = 0.0, 0, []
        with torch.no_grad():
            e_pos = torch.stack([before(x_pos[i:i + 1], c_pos[i:i + 1])[0] for i in range(8)]).double()
            e_neg = torch.stack([before(x_neg[i:i + 1], c_pos[i:i + 1])[0] for i in range(8)]).double()
            for i in range(8):
                if torch.equal(wrong[i], c_pos[i]):
                    continue
                wrong_e.append(before(x_pos[i:i + 1], wrong[i:i + 1])[0].double())
                total += float(torch.log1p(torch.exp(e_pos[i] - wrong_e[-1])))
                count += 1
        assert abs(stats["cond_loss"] - total / count) < 1e-5  # float32, batched vs one by one
        wrong_e = torch.stack(wrong_e)
        assert abs(stats["e_wrong"] - float(wrong_e.mean())) < 1e-5 and float(wrong_e.abs().max()) > 1e-3
        paper = float((e_pos - e_neg).mean() + (e_pos.square() + e_neg.square()).mean())
        expected = paper + 0.7 * total / count + 0.3 * float(wrong_e.square().mean())
        assert abs(stats["loss"] - expected) < 1e-5

    plain = Trainer(_small(tmp_path / "plain", cond="color"), data=synthetic_data(64, 16, 0))
    state = plain.gen.get_state()
    x, (c,) = plain.data.batch(torch.arange(8), plain.cond_names)
    assert "cond_loss" not in plain.update(x, torch.rand_like(x), c, c)
    assert torch.equal(plain.gen.get_state(), state)
    with pytest.raises(ValueError, match="cond_contrast"):
        TrainConfig(cond="none", cond_contrast=1.0)
    with pytest.raises(ValueError, match="cond_reg: acts on the wrong conditions"):
        TrainConfig(cond="color", cond_reg=1.0)



@pytest.mark.parametrize("steps", [1, 3])
def test_cond_adv_ranks_right_against_wrong_conditions_on_attacked_positives(tmp_path, steps):
    """cond_adv = eps: each positive gets a uniform start in the eps-ball (the run's generator), then
    ``steps`` signed-gradient steps of the ranking loss (size eps for one, 2.5 eps / n for n), each
    projected into the ball and [0, 1], computed here image by image with autograd; the result stays in
    the ball and in [0, 1], and raises the ranking loss over the random start. update() then ranks right
    against wrong conditions on those images (cond_loss, e_wrong), while the contrastive term keeps the
    clean positives."""
    import copy

    seed = int(torch.randint(0, 2**31, (1,)))
    eps = 0.03
    size = eps if steps == 1 else 2.5 * eps / steps
    data = synthetic_data(64, 16, seed % 1000)
    tr = Trainer(_small(tmp_path, cond="color", cond_contrast=0.7, cond_reg=0.3, cond_adv=eps, cond_adv_steps=steps,
                        seed=seed % 97, spectral_norm=False), data=data)
    for film in (m for m in tr.model.modules() if m.__class__.__name__ == "FiLM"):
        torch.nn.init.normal_(film.linear.weight, std=0.5)
    x_pos, (c_pos,) = data.batch(torch.randint(0, len(data), (8,)), tr.cond_names)
    x_neg = torch.rand_like(x_pos)
    before = copy.deepcopy(tr.model).train()
    state = tr.gen.get_state()

    def rank(x, c, w):  # one image at a time
        return torch.nn.functional.softplus(before(x, c)[0] - before(x, w)[0])

    wrong = tr.mismatched_conditions(c_pos)
    start = (x_pos + (torch.rand(x_pos.shape, generator=tr.gen) * 2 - 1) * eps).clamp(0, 1)
    expect, raised = [[] for _ in range(steps + 1)], 0
    for i in range(8):
        xi, ci, wi, x0 = start[i:i + 1], c_pos[i:i + 1], wrong[i:i + 1], x_pos[i:i + 1]
        with torch.no_grad():
            first = float(rank(xi, ci, wi))
        for k in range(steps):
            expect[k].append(xi)
            xi = xi.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(rank(xi, ci, wi), xi)
            xi = torch.minimum(torch.maximum(xi.detach() + size * g.sign(), x0 - eps), x0 + eps).clamp(0, 1)
        expect[steps].append(xi)
        with torch.no_grad():
            raised += float(rank(xi, ci, wi)) > first
    expect = [torch.cat(e) for e in expect]  # the iterates: the start, after each step
    tr.gen.set_state(state)
    wrong = tr.mismatched_conditions(c_pos)
    seen = []  # the iterates the attack evaluated the model at
    hook = tr.model.register_forward_pre_hook(lambda _, args: seen.append(args[0][:8].detach().clone()))
    got = tr.adversarial_positives(x_pos, c_pos, wrong, torch.ones(8, dtype=torch.bool))
    hook.remove()
    assert float((got - x_pos).abs().max()) <= eps + 1e-6 and float(got.min()) >= 0 and float(got.max()) <= 1
    assert len(seen) == steps
    for a, e in zip(seen + [got], expect):  # a sign may flip where the gradient is ~0
        assert float((a - e).abs().gt(1e-6).float().mean()) < 1e-3
    assert float((got - x_pos).abs().mean()) > eps / 4 and raised >= 6

    tr.gen.set_state(state)
    stats = tr.update(x_pos, x_neg, c_pos, c_pos)
    tr.gen.set_state(state)
    tr.model.load_state_dict(before.state_dict())  # the attack as update() saw it, before its optimiser step
    wrong = tr.mismatched_conditions(c_pos)
    attacked = tr.adversarial_positives(x_pos, c_pos, wrong, wrong != c_pos)
    with torch.no_grad():
        e_right = torch.stack([before(attacked[i:i + 1], c_pos[i:i + 1])[0] for i in range(8)]).double()
        e_wrong = torch.stack([before(attacked[i:i + 1], wrong[i:i + 1])[0] for i in range(8)]).double()
        e_pos = torch.stack([before(x_pos[i:i + 1], c_pos[i:i + 1])[0] for i in range(8)]).double()
        e_neg = torch.stack([before(x_neg[i:i + 1], c_pos[i:i + 1])[0] for i in range(8)]).double()
    cond_loss = float(torch.nn.functional.softplus(e_right - e_wrong).mean())
    assert abs(stats["cond_loss"] - cond_loss) < 1e-5 and abs(stats["e_wrong"] - float(e_wrong.mean())) < 1e-5
    paper = float((e_pos - e_neg).mean() + (e_pos.square() + e_neg.square()).mean())
    assert abs(stats["loss"] - (paper + 0.7 * cond_loss + 0.3 * float(e_wrong.square().mean()))) < 1e-5
    with pytest.raises(ValueError, match="cond_adv: acts on the wrong conditions"):
        TrainConfig(cond="color", cond_adv=0.03)
    with pytest.raises(ValueError, match="cond_adv"):
        TrainConfig(cond="color", cond_contrast=1.0, cond_adv=-0.1)
    with pytest.raises(ValueError, match="cond_adv_steps: counts the steps"):
        TrainConfig(cond="color", cond_contrast=1.0, cond_adv_steps=3)
    with pytest.raises(ValueError, match="cond_adv_steps"):
        TrainConfig(cond="color", cond_contrast=1.0, cond_adv=0.03, cond_adv_steps=0)

def test_cond_jitter_makes_every_second_wrong_position_a_near_miss(tmp_path):
    """With cond_jitter s, odd rows of the wrong conditions are the true position plus noise of scale
    s (empirical scale within 15% over 2048 draws), even rows stay a permutation of the batch's
    positions; the draws are reproducible from the run's generator; class conditions ignore it."""
    seed = int(torch.randint(0, 2**31, (1,)))
    s = 0.05 + 0.3 * float(torch.rand(()))
    tr = Trainer(_small(tmp_path / "pos", cond="pos", cond_contrast=1.0, cond_jitter=s, seed=seed % 97),
                 data=synthetic_data(64, 16, seed % 1000))
    _, (c,) = tr.data.batch(torch.randperm(64)[:32], tr.cond_names)
    state = tr.gen.get_state()
    wrong = tr.mismatched_conditions(c)
    tr.gen.set_state(state)
    assert torch.equal(tr.mismatched_conditions(c), wrong)
    assert all(any(torch.equal(w, ci) for ci in c) for w in wrong[0::2])
    deltas = torch.cat([tr.mismatched_conditions(c)[1::2] - c[1::2] for _ in range(128)])
    assert abs(float(deltas.std()) / s - 1) < 0.15 and abs(float(deltas.mean())) < 0.2 * s
    colour = Trainer(_small(tmp_path / "color", cond="color", cond_contrast=1.0, cond_jitter=s),
                     data=synthetic_data(64, 16, 0))
    _, (k,) = colour.data.batch(torch.arange(16), colour.cond_names)
    other = colour.mismatched_conditions(k)
    assert other.dtype == k.dtype and bool((other != k).all()) and int(other.max()) < 3
    with pytest.raises(ValueError, match="cond_jitter"):
        TrainConfig(cond="pos", cond_jitter=0.1)
    with pytest.raises(ValueError, match="cond_jitter"):
        TrainConfig(cond="pos", cond_contrast=1.0, cond_jitter=-0.1)


@pytest.mark.slow
def test_cond_contrast_with_coords_teaches_position(tmp_path):
    """With the ranking term and coordinate channels, the tiny model reads positions on fresh data
    (cond_acc: right condition against a neighbour's). Measured before writing this: a tiny model on
    the ranking term alone without coords stayed at log 2 = 0.693 for 200 iterations, with coords
    it fell to 0.38 by 600 (seed 1). ~30-100 s."""
    seed = int(torch.randint(0, 1000, (1,)))
    data = synthetic_data(256, 16, seed)
    tr = Trainer(_small(tmp_path, cond="pos", cond_contrast=1.0, coords=True, spectral_norm=False, iterations=700,
                        batch_size=16, langevin_steps=3, ema=None, grad_clip=None, checkpoint_every=1000,
                        image_every=1000, log_every=1000, seed=seed, lr=1e-3), data=data)
    tr.train()
    fresh = synthetic_data(128, 16, seed + 1)
    tr.last_positives, tr.last_positive_cond = fresh.images.float() / 255, fresh.labels["pos"]
    acc = tr.condition_accuracy()
    assert acc > 0.75, f"seed {seed}: cond_acc {acc:.2f} on fresh data"


def test_init_from_starts_a_run_from_another_models_weights(tmp_path):
    """--init-from: a new coords run starts from a plain run's EMA weights (coordinate weights zero),
    EMA included; resuming it later ignores the flag and loads its own checkpoint."""
    from ebm_fast.models import load_model

    data = synthetic_data(64, 16, 0)
    Trainer(_small(tmp_path / "a", cond="pos", spectral_norm=False), data=data).train()
    source, _ = load_model(tmp_path / "a" / "ckpt" / "last.pt")
    cfg = _small(tmp_path / "b", cond="pos", spectral_norm=False, coords=True, iterations=2,
                 init_from=str(tmp_path / "a" / "ckpt" / "last.pt"))
    tr = Trainer(cfg, data=data)
    for model in (tr.model, tr.ema):
        for name, value in source.state_dict().items():
            mine = model.state_dict()[name]
            assert torch.equal(mine[:, :3] if name == "stem.weight" else mine, value), name
        assert not model.stem.weight[:, 3:].any()
    tr.train()
    again = Trainer(TrainConfig(**{**cfg.to_dict(), "iterations": 3, "resume": True, "init_from": None}), data=data)
    again.resume()
    assert again.step_count == 2 and torch.equal(again.model.stem.weight, tr.model.stem.weight)


@pytest.mark.parametrize("source_cond", ["pos", "none"])
def test_init_from_another_attribute_copies_the_trunk_only(tmp_path, capsys, source_cond):
    """--init-from a model that reads another attribute (or none): every trunk weight is the
    source's, the condition head (FiLM) starts at zero, so at step 0 the new model's energy is the
    same for every condition; a source that reads the same attribute under its alias keeps its head."""
    from ebm_fast.models import condition_head_keys, load_model

    data = synthetic_data(64, 16, 0)
    Trainer(_small(tmp_path / "a", cond=source_cond, spectral_norm=False, iterations=2), data=data).train()
    src_path = str(tmp_path / "a" / "ckpt" / "last.pt")
    source, _ = load_model(src_path)
    capsys.readouterr()
    tr = Trainer(_small(tmp_path / "b", cond="color", spectral_norm=False, init_from=src_path), data=data)
    assert f"reads {source_cond!r}, this run 'color': copying its trunk" in capsys.readouterr().err
    head = condition_head_keys(tr.model)
    assert head and all(".film" in k for k in head)
    for name, value in tr.model.state_dict().items():
        if name in head:
            assert not value.any(), name
        else:
            assert torch.equal(value, source.state_dict()[name]), name
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        e = [tr.model(x, torch.full((5,), k)) for k in range(3)]
        torch.testing.assert_close(e[0], e[1])
        torch.testing.assert_close(e[0], e[2])
        if source_cond == "none":  # no head on either side: the new model is the source at step 0
            torch.testing.assert_close(e[0], source(x))
    # the same attribute under another name ("position" is "pos") copies the head too
    if source_cond == "pos":
        tr = Trainer(_small(tmp_path / "c", cond="position", spectral_norm=False, init_from=src_path), data=data)
        assert "copying its trunk" not in capsys.readouterr().err
        for name, value in source.state_dict().items():
            assert torch.equal(tr.model.state_dict()[name], value), name


def test_init_from_an_ensemble_names_its_members(tmp_path):
    """An ensemble file (ebm-fast models combine) has no single set of weights: the error says so and
    names the member files to start from instead."""
    from ebm_fast.combine_models import combine_models
    from ebm_fast.models import save_model

    data = synthetic_data(64, 16, 0)
    paths = []
    for name in ("a", "b"):
        Trainer(_small(tmp_path / name, cond="color", spectral_norm=False, iterations=1), data=data).train()
        paths.append(str(tmp_path / name / "ckpt" / "last.pt"))
    save_model(tmp_path / "ens.pt", *combine_models(paths))
    with pytest.raises(ValueError, match=r"an ensemble of 2 models .* start from a member \(.*a/ckpt/last.pt, .*b/ckpt"):
        Trainer(_small(tmp_path / "c", cond="color", spectral_norm=False, init_from=str(tmp_path / "ens.pt")),
                data=data)


def test_the_concept_recipe_parses_into_the_documented_config(tmp_path):
    """recipe_flags: every concept gets the ranking term and the mean+max pool; positions also get
    coordinate channels and near-miss wrong positions; all sample with step 10; the flags parse through `ebm-fast train`'s parser."""
    import shlex

    from ebm_fast.paper.concepts import recipe_flags

    for attribute, coords in (("position", True), ("pos", True), ("color", False), ("shape", False)):
        cfg = config_from_args(["--out", str(tmp_path / attribute), "--cond", attribute,
                                *shlex.split(recipe_flags(attribute))])
        assert (cfg.coords, cfg.pool, cfg.cond_contrast, cfg.model) == (coords, "meanmax", 5.0, "small32")
        assert cfg.cond_jitter == (0.1 if coords else 0.0)
        assert not cfg.spectral_norm and cfg.iterations == 20000
        # the sampler the ranking term needs (docs/training.md): a step of 10, noise 0.005, the 0.01 clip
        assert (cfg.step_size, cfg.noise, cfg.sample_grad_clip) == (10.0, 0.005, 0.01)
        assert cfg.cond_reg == 1.0  # the wrong conditions' energies are held near the negatives
        assert cfg.export_every == 500  # the best step is chosen by judging the kept models'
        # the same recipe at 64x64 (for a GPU): the paper's resolution and model, batch 32
        big = config_from_args(["--out", str(tmp_path / attribute), "--cond", attribute,
                                *shlex.split(recipe_flags(attribute, 64))])
        assert (big.resolution, big.model, big.batch_size) == (64, "scenes64", 32)
        assert dataclasses.replace(big, resolution=32, model="small32", batch_size=16) == cfg
    with pytest.raises(ValueError, match="resolution"):
        recipe_flags("color", 128)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_checkpoints_resumes_and_loads_on_the_cpu(tmp_path):
    """A run on the GPU writes a checkpoint that resumes on the GPU with the saved weights and step,
    and whose model loads on the CPU (weights_only) with the same values."""
    from ebm_fast.models import load_model

    data = synthetic_data(32, 16, seed=int(np.random.default_rng().integers(1000)))
    tr = Trainer(_small(tmp_path, iterations=2, device="cuda"), data=data)
    assert all(p.is_cuda for p in tr.model.parameters())
    tr.train()
    saved = {k: v.detach().cpu().clone() for k, v in tr.ema.state_dict().items()}
    again = Trainer(_small(tmp_path, iterations=4, device="cuda", resume=True), data=data)
    assert again.resume() and again.step_count == 2  # train() resumes the same way (again)
    for k, v in again.ema.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k
    again.train()
    assert again.step_count == 4
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 4 and all(np.isfinite(r["loss"]) for r in recs if "loss" in r)
    model, _ = load_model(tmp_path / "ckpt" / "last.pt")
    ref = {k: v.cpu() for k, v in again.ema.state_dict().items()}
    for k, v in model.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, ref[k]), k


def test_max_minutes_stops_at_a_checkpoint_and_resume_goes_on_bit_exact(tmp_path, capsys):
    """A wall-clock budget stops the run at the first checkpoint after it (no model.pt, a "stopped"
    log line); --resume without the budget finishes it with the weights of an uninterrupted run."""
    data = synthetic_data(32, 16, seed=int(np.random.default_rng().integers(1000)))
    straight = Trainer(_small(tmp_path / "a", iterations=6), data=data)
    straight.train()
    cut = Trainer(_small(tmp_path / "b", iterations=6, max_minutes=1e-9), data=data)
    stats = cut.train()
    assert stats["stopped"] and stats["step"] == 2 and cut.step_count == 2
    assert "stopped at step 2 of 6" in capsys.readouterr().err
    assert not (tmp_path / "b" / "model.pt").exists()
    last = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1])
    assert last == {"stopped": "max_minutes=1e-09", "step": 2}
    resumed = Trainer(_small(tmp_path / "b", iterations=6, resume=True), data=data)
    resumed.train()
    assert resumed.step_count == 6 and (tmp_path / "b" / "model.pt").exists()
    for k, v in _full_state(straight)["model"].items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=0)


def test_max_minutes_is_per_invocation_on_the_cli(tmp_path):
    """A resumed CLI run does not inherit the budget its checkpoint was written under."""
    npz = tmp_path / "d.npz"
    d = synthetic_data(32, 16, seed=0)
    np.savez(npz, images=d.images.permute(0, 2, 3, 1).numpy(), label_pos=d.labels["pos"].numpy())
    assert cli_main(_cli_args(tmp_path / "r", npz, 4, "--max-minutes", "1e-9")) == 0
    assert load_checkpoint_file(tmp_path / "r" / "ckpt" / "last.pt")["step"] == 2
    cfg = config_from_args(["--out", str(tmp_path / "r"), "--resume"])
    assert cfg.max_minutes is None and cfg.iterations == 4
    assert config_from_args(["--out", str(tmp_path / "r"), "--resume", "--max-minutes", "5"]).max_minutes == 5.0
    assert config_from_args(["--out", str(tmp_path / "r"), "--resume", "--compile"]).compile is True
    assert config_from_args(["--out", str(tmp_path / "r"), "--resume", "--no-compile"]).compile is False


def test_resume_on_another_device_kind_reseeds_the_replay_generator(tmp_path):
    """A checkpoint written on CUDA holds a 16-byte Philox state for the replay generator, which a
    CPU generator cannot take (and the reverse): the rest loads, the replay draws restart from the
    run's seed with a warning, and the run goes on."""
    data = synthetic_data(32, 16, seed=int(np.random.default_rng().integers(1000)))
    Trainer(_small(tmp_path, iterations=2), data=data).train()
    state = load_checkpoint_file(tmp_path / "ckpt" / "last.pt")
    state["ranks"][0]["replay_gen"] = torch.randint(0, 256, (16,), dtype=torch.uint8)  # a CUDA generator's
    again = Trainer(_small(tmp_path, iterations=4, resume=True), data=data)
    with pytest.warns(RuntimeWarning, match="another device kind"):
        again.load_state_dict(state)
    assert again.step_count == 2
    for k, v in state["model"].items():
        assert torch.equal(again.model.state_dict()[k], v), k
    first = torch.randint(0, 10**6, (4,), generator=again.replay_gen)
    again.replay_gen.manual_seed(3 * 1_000_003 + 7919 + 2)  # seed 3 (the _small config), rank 0, step 2
    assert torch.equal(first, torch.randint(0, 10**6, (4,), generator=again.replay_gen))
