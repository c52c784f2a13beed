"""The ``ebm-fast`` command: every user mistake ends in one line on stderr and exit status 2, never a
traceback, and outputs are checked before any long work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ebm_fast.cli import COMMANDS, main
from ebm_fast.paper.concepts import default_concepts_dir

SHIPPED = default_concepts_dir()
REPO = Path(__file__).resolve().parents[1]


def _cases(tmp: Path) -> list[tuple[list[str], str]]:
    """``(argv, a phrase the error line must hold)`` per typical mistake of each command."""
    not_a_dir = tmp / "plain_file"  # a file where a folder is expected: no folder can be made under it
    bad_png = tmp / "bad.png"
    npz = tmp / "x.npz"
    missing = str(tmp / "missing")
    return [
        (["nope"], "invalid choice"),
        (["eval"], "expected a subcommand"),
        # train
        (["train", "--data", missing + ".npz", "--out", str(tmp / "o1"), "--device", "cpu"], "no such file"),
        (["train", "--lr", "-1", "--out", str(tmp / "o2")], "lr: expected a number > 0"),
        (["train", "--lr", "abc"], "invalid float value"),
        (["train", "--iterations", "2.5"], "invalid int value"),
        (["train", "--device", "gpu7", "--out", str(tmp / "o3")], "device"),
        (["train", "--device", "cuda:7", "--out", str(tmp / "o3")], "cuda"),
        (["train", "--out", str(not_a_dir), "--device", "cpu"], "not a folder"),
        (["train", "--init-from", missing + ".pt", "--out", str(tmp / "o4"), "--device", "cpu"], "--init-from"),
        (["train", "--objective", "gan"], "invalid choice"),
        # export
        (["export", missing, str(tmp / "m.pt")], "no checkpoint"),
        (["export", str(tmp), str(not_a_dir / "m.pt")], "not a folder"),
        # sample
        (["sample", "shape=sphere & colr=red", "--out", str(tmp / "g.png")], "at column 16 of 'shape=sphere & colr=red'"),
        (["sample", "shape=sphere & (color=red", "--out", str(tmp / "g.png")], "at column"),
        (["sample", "shape=sphere", "--out", str(tmp / "g.jpg")], "expected a file ending in .png or .npz"),
        (["sample", "shape=sphere", "--out", str(not_a_dir / "g.png")], "not a folder"),
        (["sample", "shape=sphere", "--n", "0"], "--n: expected a number >= 1"),
        (["sample", "shape=sphere", "--device", "tpu", "--out", str(tmp / "g.png")], "device"),
        (["sample", "shape=sphere", "--concepts", missing, "--out", str(tmp / "g.png")], "missing"),
        # demo
        (["demo", "--concepts", missing, "--out", str(tmp / "d")], "expected position.pt and color.pt"),
        (["demo", "--threads", "0", "--out", str(tmp / "d")], "--threads"),
        (["demo", "--gaussian", "--backend", "warp", "--out", str(tmp / "d")], "--backend"),
        (["demo", "--gaussian", "--out", str(not_a_dir)], "not a folder"),
        # data scenes
        (["data", "scenes", "--n", "3", "--out", str(npz), "--colors", "magenta", "--renderer", "numpy"], "magenta"),
        (["data", "scenes", "--n", "3"], "--out"),
        (["data", "scenes", "--n", "3", "--out", str(npz), "--clutter", "9", "--renderer", "numpy"], "clutter"),
        (["data", "scenes", "--n", "3", "--out", str(npz), "--split-fraction", "1.5", "--renderer", "numpy"],
         "split_fraction"),
        (["data", "scenes", "--n", "3", "--out", str(not_a_dir / "x.npz"), "--renderer", "numpy"],
         "not a folder"),
        # judges train
        (["judges", "train", "--n", "0", "--out", str(tmp / "j.pt"), "--renderer", "numpy"], "--n"),
        (["judges", "train", "--out", str(not_a_dir / "j.pt"), "--renderer", "numpy"], "not a folder"),
        # eval composition
        (["eval", "composition", "--n", "0", "--out", str(tmp / "c")], "--n"),
        (["eval", "composition", "--concepts", missing, "--tables", "1", "--out", str(tmp / "c")], "missing"),
        (["eval", "composition", "--rows", "no_such_row"], "invalid choice"),
        (["eval", "composition", "--realism", "1", "--out", str(tmp / "c")], "--realism: the distance needs"),
        # eval inference
        (["eval", "inference", "--out", str(tmp / "i")], "expected --ebm, --export-train or --train-regressor"),
        (["eval", "inference", "--ebm", missing + ".pt", "--out", str(tmp / "i")], "no such file"),
        (["eval", "inference", "--ebm", str(SHIPPED / "color.pt"), "--out", str(tmp / "i")],
         "expected a position model"),
        # eval models
        (["eval", "models", missing, "--rows", "position"], "no config.json"),
        # eval diffusion; train --objective dsm
        (["eval", "diffusion", "--model", missing + ".pt", "--out", str(tmp / "d")], "no such file"),
        (["eval", "diffusion", "--settings", "no_such_setting"], "invalid choice"),
        (["eval", "diffusion", "--model", str(SHIPPED / "color.pt"), "--n", "0", "--out", str(tmp / "d")], "--n"),
        (["eval", "diffusion", "--model", str(SHIPPED / "color.pt"), "--realism", "1", "--out", str(tmp / "d")],
         "--realism: the distance needs at least 2 renders"),
        (["train", "--objective", "dsm", "--lr", "abc"], "invalid float"),
        (["train", "--objective=dsm", "--out", str(not_a_dir / "run")], "cannot create the folder"),
        # eval four-way, multi-object, extrapolation
        (["eval", "four-way", "--n", "0", "--out", str(tmp / "f")], "--n"),
        (["eval", "four-way", "--concepts", missing, "--out", str(tmp / "f")], "missing"),
        (["eval", "multi-object", "--out", str(tmp / "m")], "expected --concept"),
        (["eval", "multi-object", "--concept", str(SHIPPED / "color.pt"), "--out", str(tmp / "m")],
         "expected a position model"),
        (["eval", "extrapolation", "--out", str(tmp / "x")], "expected --models"),
        (["eval", "extrapolation", "--models", missing, "--fractions", "0.1", "--train-regressor",
          "--out", str(tmp / "x")], "no such file"),
        # infer
        (["infer", "--model", missing + ".pt", "--images", str(npz)], "no such file"),
        (["infer", "--model", str(SHIPPED / "position.pt"), "--images", str(bad_png)], "not a readable image"),
        (["infer", "--model", str(SHIPPED / "position.pt"), "--images", str(tmp / "big.npz")],
         "trained at 32x32"),
        (["infer", "--model", str(SHIPPED / "position.pt"), "--images", str(npz), "--grid", "1"], "--grid"),
        # models combine
        (["models", "combine", missing + ".pt", "--out", str(tmp / "e.pt")], "no such file"),
        (["models", "combine", str(SHIPPED / "position.pt"), str(SHIPPED / "color.pt"), "--out", str(tmp / "e.pt")],
         "color"),
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "plain_file").write_text("a file, not a folder")
    (tmp / "bad.png").write_text("not an image")
    rng = np.random.default_rng()
    np.savez(tmp / "x.npz", images=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp / "big.npz", images=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    return tmp


@pytest.mark.parametrize("case", range(len(_cases(Path("/tmp")))),
                         ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(_cases(Path("/tmp")))])
def test_each_mistake_is_one_line_and_status_2(case, workdir, capsys):
    argv, phrase = _cases(workdir)[case]
    rc = main(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert rc == 2, (argv, out.out, out.err)
    assert len(lines) == 1, out.err
    assert phrase in lines[0], lines[0]
    assert lines[0].startswith("ebm-fast"), lines[0]
    assert "Traceback" not in out.err + out.out


def test_every_command_is_covered_and_has_help(capsys):
    cases = [argv for argv, _ in _cases(Path("/tmp"))]
    for words in COMMANDS:
        assert any(argv[: len(words)] == list(words) for argv in cases), words
        assert main([*words, "--help"]) == 0
        assert f"usage: ebm-fast {' '.join(words)}" in capsys.readouterr().out
    assert main([]) == 0 and "COMMAND" in capsys.readouterr().out


def test_the_installed_entry_point_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ebm_fast.cli", "sample", "shape=sphere", "--n", "-3",
                           "--out", str(tmp_path / "g.png")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["ebm-fast sample: error: --n: expected a number >= 1, got -3"]
    assert not (tmp_path / "g.png").exists()
