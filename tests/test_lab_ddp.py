"""torchrun with 2 CPU processes (gloo) draws the masks of a single process: the losses match."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Batch 49 on 100 samples: global batches of 49, 49 and 2, so the shards are uneven (24 / 25)
# and the last one would put a single sample on rank 1.
ARGS = ["compare", "--epochs", "2", "--seeds", "1", "--batch-size", "49", "--quiet"]
CASES = {
    "mlp": ["--dataset", "overfit", "--model", "mlp"],
    "cnn": ["--dataset", "digits", "--model", "cnn", "--train-size", "100", "--val-size", "100"],  # Dropout2d
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(out: Path, slug: str) -> list[dict]:
    return json.loads((out / "runs" / slug / "seed-0" / "result.json").read_text())["history"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_gloo_processes_match_one_process(tmp_path, case):
    args = ARGS + CASES[case]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "dropkit", *args, "--out", str(single)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "dropkit", *args, "--out", str(ddp)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("| dropout p=0.5 |") == 1  # only rank 0 prints
    assert json.loads((ddp / "env.json").read_text())["world_size"] == 2
    for slug in ("p0", "p0.5"):
        a, b = _history(single, slug), _history(ddp, slug)
        assert len(a) == len(b) == 2
        for ma, mb in zip(a, b):
            for key in ("train_loss_running", "train_loss", "val_loss"):
                assert mb[key] == pytest.approx(ma[key], rel=1e-5, abs=1e-6), (slug, key, ma["epoch"])
            # the running accuracy counts every sample of the epoch over both ranks (one rank alone sees about half);
            # summation order may flip at most one near-tied prediction of the 100
            assert mb["train_acc_running"] == pytest.approx(ma["train_acc_running"], abs=1.01 / 100), (slug, ma["epoch"])


def test_shard_bounds_split_evenly():
    from dropkit.lab.train import shard_bounds

    assert shard_bounds(49, 2) == [0, 24, 49]
    assert shard_bounds(5, 4) == [0, 1, 2, 3, 5]
    for b in range(1, 40):
        for w in range(1, 6):
            bounds = shard_bounds(b, w)
            assert bounds[0] == 0 and bounds[-1] == b and bounds == sorted(bounds)


def test_one_sample_shards_draw_their_rows_of_the_batch_mask():
    import torch

    import dropkit

    x = torch.rand(5, 3, 4, 4) + 0.5
    for op in (lambda t: dropkit.functional.dropout(t, 0.5, seed=3),
               lambda t: dropkit.functional.dropout2d(t, 0.5, seed=3),
               lambda t: dropkit.functional.drop_path(t, 0.5, seed=3)):
        full = op(x)
        for start in range(5):
            with dropkit.rng.batch_shard(start):
                assert torch.equal(op(x[start : start + 1]), full[start : start + 1])


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
