"""torchrun with 2 CPU processes (gloo) draws the masks of a single process: the losses match."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["compare", "--dataset", "overfit", "--epochs", "3", "--seeds", "1", "--batch-size", "33", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(out: Path, slug: str) -> list[dict]:
    return json.loads((out / "runs" / slug / "seed-0" / "result.json").read_text())["history"]


def test_two_gloo_processes_match_one_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "dropkit", *ARGS, "--out", str(single)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "dropkit", *ARGS, "--out", str(ddp)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("| dropout p=0.5 |") == 1  # only rank 0 prints
    assert json.loads((ddp / "env.json").read_text())["world_size"] == 2
    for slug in ("p0", "p0.5"):
        a, b = _history(single, slug), _history(ddp, slug)
        assert len(a) == len(b) == 3
        for ma, mb in zip(a, b):
            for key in ("dropout_loss", "train_loss", "val_loss"):
                assert mb[key] == pytest.approx(ma[key], rel=1e-5, abs=1e-6), (slug, key, ma["epoch"])


def test_batch_shard_is_what_makes_the_masks_match():
    """The shards of a batch, each under batch_shard(start), draw the single-process mask."""
    import torch

    import dropkit
    from dropkit.rng import batch_shard

    x = torch.ones(33, 20)
    full = dropkit.functional.dropout(x, 0.5, seed=7)
    with batch_shard(16):
        tail = dropkit.functional.dropout(x[16:], 0.5, seed=7)
    assert torch.equal(full[16:], tail)
    assert not torch.equal(full[16:], dropkit.functional.dropout(x[16:], 0.5, seed=7))
