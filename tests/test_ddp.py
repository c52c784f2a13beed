"""`ebm-fast train` under torchrun: DistributedDataParallel with gloo on the CPU, 2 processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebm_fast.checkpoint import load_checkpoint_file
from ebm_fast.training import synthetic_data

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_ranks_gloo(tmp_path):
    d = synthetic_data(64, 16, seed=int(torch.randint(0, 1000, (1,))))
    npz = tmp_path / "data.npz"
    np.savez(npz, images=d.images.permute(0, 2, 3, 1).numpy(), label_pos=d.labels["pos"].numpy())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "ebm_fast.cli", "train", "--out", str(out), "--data", str(npz), "--cond", "position", "--model", "tiny",
           "--iterations", "4", "--batch-size", "8", "--langevin-steps", "5", "--replay-capacity", "16",
           "--checkpoint-every", "2", "--log-every", "1", "--threads", "1", "--no-progress", "--seed", "11", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    final = recs[-1]
    assert final["final"] and final["step"] == 4
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["e_pos"]) and math.isfinite(r["e_neg"]) for r in recs)
    # each rank hashed its own parameters; DDP's all-reduced gradients keep them identical
    assert len(final["rank_digests"]) == 2 and final["rank_digests"][0] == final["rank_digests"][1]

    state = load_checkpoint_file(out / "ckpt" / "last.pt")
    assert state["world_size"] == 2 and [r["rank"] for r in state["ranks"]] == [0, 1]
    # a replay buffer per rank, fed by the rank's own chains: different contents
    b0, b1 = (r["replay"]["data"] for r in state["ranks"])
    assert state["ranks"][0]["replay"]["size"] == 16 and not torch.equal(b0, b1)
