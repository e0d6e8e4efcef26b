"""One rank of the 2-process DTensor / FSDP2 checks (gloo, CPU); run by tests/test_distributed.py.

    python tests/dist_worker.py RANK WORLD INIT_FILE OUT_DIR SCENARIO...

Each scenario writes ``OUT_DIR/<scenario>-<rank>.pt``: a dict of results, or ``{"error": traceback}``.
The models and data are defined here so that the test's 1-process reference runs the same code.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta

import torch

import dropkit
import dropkit.functional as F

IN, HIDDEN, OUT = 8, 16, 4
STEPS, BATCH, LR = 3, 6, 0.1


def mlp(seed: int | None) -> torch.nn.Sequential:
    """Linear -> ReLU -> dropkit Dropout -> Linear, initialised from torch.manual_seed(0)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), dropkit.nn.Dropout(0.5, seed=seed), torch.nn.Linear(HIDDEN, OUT)
    )


def batches(n: int = BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, IN, generator=g), torch.randn(n, OUT, generator=g)) for _ in range(STEPS)]


def train(model, data, *, shard_start=None, reduce_loss=None) -> list[float]:
    """SGD steps; ``shard_start``: wrap the forward in dropkit.rng.batch_shard (data parallel)."""
    torch.manual_seed(1)  # unseeded Dropout draws its keys from here: the same on every rank
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for x, t in data:
        if shard_start is None:
            loss = torch.nn.functional.mse_loss(model(x), t)
        else:
            with dropkit.rng.batch_shard(shard_start):
                loss = torch.nn.functional.mse_loss(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(reduce_loss(loss.detach()) if reduce_loss else loss.item())
    return losses


def full_params(model) -> dict[str, torch.Tensor]:
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in model.named_parameters()}


# ---------------------------------------------------------------------------
# DTensor masks: every variant, every placement, against the single-tensor call
# ---------------------------------------------------------------------------
def _module_twice():
    """A seeded module called twice: calls 0 and 1 draw (seed, 0) and (seed, 1)."""
    m = dropkit.nn.Dropout(0.5, seed=9)
    return lambda x: m(m(x))


#: name: (factory of a fresh callable, global shape)
MASK_CASES = {
    "dropout": (lambda: lambda x: F.dropout(x, 0.3, seed=5), (5, 7, 6)),
    "dropout2d": (lambda: lambda x: F.dropout2d(x, 0.5, seed=6), (3, 5, 4, 3)),
    "drop_path": (lambda: lambda x: F.drop_path(x, 0.5, seed=7), (6, 3, 5)),
    "locked": (lambda: lambda x: F.locked_dropout(x, 0.4, seed=8), (4, 3, 5)),
    "nn.Dropout": (_module_twice, (5, 9)),
}


def case_input(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def case_weight(shape) -> torch.Tensor:
    return torch.arange(float(torch.Size(shape).numel()), dtype=torch.float64).reshape(shape)


def placements():
    from torch.distributed.tensor import Replicate, Shard

    return {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Shard(-1)": Shard(-1), "Replicate": Replicate()}


def scenario_masks(rank, world, mesh):
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor

    out = {}
    for name, (make, shape) in MASK_CASES.items():
        for pname, pl in placements().items():
            d = distribute_tensor(case_input(shape), mesh, [pl]).requires_grad_()
            y = make()(d)
            (y * distribute_tensor(case_weight(shape), mesh, y.placements)).sum().backward()
            out[(name, pname)] = {"y": y.full_tensor().detach(), "grad": d.grad.full_tensor(), "placements": str(y.placements)}
        # Partial: the ranks' parts sum to x; the output stays Partial and sums to the masked x
        part = case_input(shape) * (0.25 if rank == 0 else 0.75)
        y = make()(DTensor.from_local(part, mesh, [Partial()], run_check=False))
        out[(name, "Partial")] = {"y": y.full_tensor(), "placements": str(y.placements)}
    # uneven Shard(1) (7 columns: 4 / 3) in place
    d = distribute_tensor(case_input((3, 7)).float(), mesh, [Shard(1)])
    r = F.dropout(d, 0.5, inplace=True, seed=2)
    out[("inplace", "Shard(1)")] = {"y": d.full_tensor(), "same": r is d, "local": tuple(d.to_local().shape)}
    return out


def scenario_key_mismatch(rank, world, mesh):
    """Unseeded calls with different generator states on the ranks: a clear error on every rank."""
    from torch.distributed.tensor import Shard, distribute_tensor

    d = distribute_tensor(torch.ones(4, 6), mesh, [Shard(1)])
    torch.manual_seed(100 + rank)
    try:
        F.dropout(d, 0.5)
    except RuntimeError as e:
        return {"raised": str(e)}
    return {"raised": None}


def tp_model(mesh, seed):
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = mlp(seed)
    return parallelize_module(model, mesh, {"0": ColwiseParallel(use_local_output=False), "3": RowwiseParallel()})


class LocalIndexDropout(dropkit.nn.Dropout):
    """The control: dropout of the LOCAL shard with local indices (what a per-rank stream amounts to)."""

    def forward(self, x):
        from torch.distributed.tensor import DTensor

        y = super().forward(x.to_local())
        return DTensor.from_local(y, x.device_mesh, x.placements, run_check=False, shape=x.shape, stride=x.stride())


def scenario_tp(rank, world, mesh):
    out = {}
    for seed in (1234, None, "local-index"):
        model = tp_model(mesh, 1234 if seed == "local-index" else seed)
        if seed == "local-index":
            model[2].__class__ = LocalIndexDropout
        seen = []
        model[2].register_forward_hook(lambda m, args, y, seen=seen: seen.append((type(args[0]).__name__, str(args[0].placements))))
        losses = train(model, batches())
        out[seed] = {"losses": losses, "params": full_params(model), "dropout_input": seen[0]}
    return out


def scenario_fsdp(rank, world, mesh):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    out = {}
    for seed in (1234, None):
        model = mlp(seed)
        for layer in (model[0], model[3]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        local = BATCH // world
        data = [(x[rank * local : (rank + 1) * local], t[rank * local : (rank + 1) * local]) for x, t in batches()]

        def mean_loss(loss):
            dist.all_reduce(loss, op=dist.ReduceOp.SUM)
            return loss.item() / world

        losses = train(model, data, shard_start=rank * local, reduce_loss=mean_loss)
        out[seed] = {"losses": losses, "params": full_params(model), "placements": str(model[0].weight.placements)}
    return out


SCENARIOS = {"masks": scenario_masks, "key_mismatch": scenario_key_mismatch, "tp": scenario_tp, "fsdp": scenario_fsdp}


def main(argv: list[str]) -> int:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    rank, world, init_file, out_dir, *names = argv
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    mesh = init_device_mesh("cpu", (world,))
    try:
        for name in names:
            try:
                result = SCENARIOS[name](rank, world, mesh)
            except Exception:  # noqa: BLE001 - reported to the test, which fails with it (or skips, for FSDP2 on CPU)
                result = {"error": traceback.format_exc()}
            torch.save(result, os.path.join(out_dir, f"{name}-{rank}.pt"))
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
