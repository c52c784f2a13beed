"""The shell scripts' run table (scripts/runs.sh), shared by train_concepts.sh and gpu_train.sh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash(script: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_run_table_gives_data_folder_and_recipe_attribute(tmp_path):
    (tmp_path / "table3_train_r32.npz").write_bytes(b"")  # present: nothing to render
    got = _bash('. scripts/runs.sh; for n in position color shape size table3 continual-position shape64 position64; do '
                'run_spec "$n"; echo "$n|$DATA|$RUN_OUT|$ATTR|$RES"; done', PY="false", EBM_FAST_CACHE=str(tmp_path))
    assert got.returncode == 0, got.stderr
    rows = {line.split("|")[0]: line.split("|")[1:] for line in got.stdout.splitlines()}
    assert rows["color"] == ["--data scenes --cond color", "runs/concepts/color32", "color", "32"]
    assert rows["size"] == ["--data scenes --cond size", "runs/concepts/size32", "size", "32"]
    assert rows["table3"] == [f"--data {tmp_path}/table3_train_r32.npz --cond position",
                              "runs/concepts/table3_position32", "position", "32"]
    assert rows["continual-position"][0] == "--data scenes --cond position --shapes box --colors purple"
    assert rows["shape64"] == ["--data scenes --cond shape", "runs/concepts/shape64", "shape", "64"]
    assert rows["position64"] == ["--data scenes --cond position", "runs/concepts/position64", "position", "64"]
    # `recipe ATTR RES` asks ebm_fast for the flags at that resolution
    got = _bash('. scripts/runs.sh; run_spec shape64; recipe "$ATTR" "$RES"', PY=sys.executable,
                EBM_FAST_CACHE=str(tmp_path))
    assert got.returncode == 0 and "--resolution 64 --model scenes64" in got.stdout, got.stderr


def test_run_table_refuses_unknown_runs_and_missing_earlier_stages(tmp_path):
    got = _bash('. scripts/runs.sh; run_spec bogus', PY="false", EBM_FAST_CACHE=str(tmp_path))
    assert got.returncode == 2 and "unknown run 'bogus'" in got.stderr and "continual-color" in got.stderr
    if not (REPO / "runs/continual/shape/model.pt").exists():
        got = _bash('. scripts/runs.sh; run_spec continual-color', PY="false", EBM_FAST_CACHE=str(tmp_path))
        assert got.returncode == 2 and "needs runs/continual/" in got.stderr


def test_gpu_train_without_a_command_prints_its_usage():
    got = _bash("bash scripts/gpu_train.sh")
    assert got.returncode == 2 and "prepare" in got.stdout and "unpack" in got.stdout
