"""DTensor (tensor parallel) and FSDP2: a mask is a function of the element's GLOBAL index.

In-process checks use torch's fake process group (one rank at a time, no processes); the
training checks run 2 gloo processes on the CPU (tests/dist_worker.py) against a 1-process run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dropkit
import dropkit.functional as F
from dropkit import distributed as dkd
from dropkit.rng import key_tensor

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this build", allow_module_level=True)

from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker as W

WORKER = Path(__file__).parent / "dist_worker.py"
SRC = Path(dropkit.__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# In process: fake process group, one rank at a time
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def fake_rank(rank: int, world: int, mesh_shape: tuple[int, ...] | None = None):
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield init_device_mesh("cpu", mesh_shape or (world,))
    finally:
        dist.destroy_process_group()


def local_results(x: torch.Tensor, placement, world: int, fn):
    """``fn`` on the DTensor of each rank's shard of ``x`` (torch's sharding, empty shards included): outputs, grads."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    outs = []
    for rank in range(world):
        with fake_rank(rank, world) as mesh:
            local = x
            if isinstance(placement, Shard):
                size, start = compute_local_shape_and_global_offset(x.shape, mesh, [placement])
                local = x.narrow(placement.dim, start[placement.dim], size[placement.dim])
            local = local.clone().requires_grad_()
            d = DTensor.from_local(local, mesh, [placement], run_check=False, shape=x.shape, stride=x.stride())
            y = fn(d)
            assert isinstance(y, DTensor) and y.placements == (placement,) and y.shape == x.shape
            y.to_local().backward(torch.ones_like(y.to_local()))
            outs.append((y.to_local().detach(), local.grad))
    return outs


SHAPES = [(5, 7, 6), (2, 9), (7,), (3, 1, 8)]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shard_local_masks_concatenated_equal_the_single_tensor_mask(shape, world):
    """Shard(d) on every dim (uneven splits included): the local outputs, concatenated, are the 1-tensor call's."""
    x = torch.randn(shape)
    ref = x.clone().requires_grad_()
    y_ref = F.dropout(ref, 0.4, seed=21)
    y_ref.sum().backward()
    for dim in range(len(shape)):
        outs = local_results(x, Shard(dim), world, lambda d: F.dropout(d, 0.4, seed=21))
        assert torch.equal(torch.cat([y for y, _ in outs], dim), y_ref.detach())
        assert torch.equal(torch.cat([g for _, g in outs], dim), ref.grad)  # backward: the same mask


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_every_dtype_and_non_finite_values_match_the_op_bit_for_bit(dtype):
    """Both local paths (the fused op on one run: Shard(0); the gathered box: Shard(1)) give the op's bits:
    one rounding from float32 (float64 for float64), -0 for a dropped negative, nan for a dropped inf."""
    x = torch.randn(6, 10, dtype=torch.float64) * 3
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    x[3, 5:9] = torch.tensor([float("inf"), float("-inf"), float("nan"), -2.5])
    x = x.to(dtype)
    ref = F.dropout(x, 0.3, seed=12)
    assert ref.isnan().sum() == 6 and (ref.signbit() & (ref == 0)).any()  # dropped infs, dropped negatives
    for dim in (0, 1):
        got = torch.cat([y for y, _ in local_results(x, Shard(dim), 2, lambda d: F.dropout(d, 0.3, seed=12))], dim)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(got.signbit(), ref.signbit())


@pytest.mark.parametrize("placement", [Replicate(), Partial()], ids=["Replicate", "Partial"])
def test_replicate_and_partial_get_the_whole_global_mask_on_every_rank(placement):
    x = torch.randn(4, 6, dtype=torch.float64)
    ref = F.dropout(x, 0.5, seed=3)
    for y, g in local_results(x, placement, 2, lambda d: F.dropout(d, 0.5, seed=3)):
        assert torch.equal(y, ref)
        assert torch.equal(g, F.dropout(torch.ones_like(x), 0.5, seed=3))


NOISE_SHAPE_FNS = {
    "dropout2d": (lambda x: F.dropout2d(x, 0.5, seed=6), (4, 6, 3, 5)),
    "dropout1d": (lambda x: F.dropout1d(x, 0.5, seed=6), (4, 6, 5)),
    "drop_path": (lambda x: F.drop_path(x, 0.5, seed=7), (6, 3, 5)),
    "locked": (lambda x: F.locked_dropout(x, 0.4, seed=8), (5, 4, 6)),
    "noise_shape": (lambda x: F.dropout(x, 0.3, noise_shape=(None, 1, None), seed=9), (5, 4, 6)),
}


@pytest.mark.parametrize("name", sorted(NOISE_SHAPE_FNS))
def test_noise_shape_variants_index_the_masks_global_shape(name):
    """Variants with a noise_shape: a sharded dim the mask is shared along takes index 0; the others the global index."""
    fn, shape = NOISE_SHAPE_FNS[name]
    x = torch.randn(shape)
    ref = fn(x)
    for dim in range(len(shape)):
        outs = local_results(x, Shard(dim), 2, fn)
        assert torch.equal(torch.cat([y for y, _ in outs], dim), ref), dim


_LOGIT = torch.tensor(-1.0, dtype=torch.float64)
#: name -> (call, input shape, linear in x)
VARIANT_FNS = {
    "gaussian_dropout": (lambda x: F.gaussian_dropout(x, 0.3, seed=5), (5, 4, 6), True),
    "gaussian_noise": (lambda x: F.gaussian_noise(x, 0.3, seed=5), (5, 4, 6), False),
    "alpha_dropout": (lambda x: F.alpha_dropout(x, 0.3, seed=5), (5, 4, 6), False),
    "feature_alpha_dropout": (lambda x: F.feature_alpha_dropout(x, 0.3, seed=5), (5, 4, 6), False),
    "drop_block2d": (lambda x: F.drop_block2d(x, 0.3, 2, seed=5), (5, 3, 6, 6), True),
    "concrete_dropout": (lambda x: F.concrete_dropout(x, _LOGIT, seed=5), (5, 4, 6), False),
}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", sorted(VARIANT_FNS))
def test_variants_on_shard0_and_replicate_equal_the_single_tensor_call(name, world):
    """Each rank's samples get the single-tensor call's noise at their global sample index; backward the same."""
    fn, shape, _ = VARIANT_FNS[name]
    x = torch.randn(shape, dtype=torch.float64)
    ref = x.clone().requires_grad_()
    y_ref = fn(ref)
    y_ref.sum().backward()
    outs = local_results(x, Shard(0), world, fn)
    assert torch.equal(torch.cat([y for y, _ in outs]), y_ref.detach())
    assert torch.equal(torch.cat([g for _, g in outs]), ref.grad)
    for y, g in local_results(x, Replicate(), world, fn):
        assert torch.equal(y, y_ref.detach()) and torch.equal(g, ref.grad)


@pytest.mark.parametrize("name", sorted(VARIANT_FNS))
def test_variants_take_partial_only_when_linear_and_refuse_inner_shards(name):
    fn, shape, linear = VARIANT_FNS[name]
    x = torch.randn(shape, dtype=torch.float64)
    if linear:  # each partial sum gets the same factor: the sum of the results is the result on the sum
        outs = local_results(x, Partial(), 2, fn)
        torch.testing.assert_close(outs[0][0] + outs[1][0], fn(2 * x), rtol=1e-12, atol=1e-12)
    else:
        with pytest.raises(ValueError, match=rf"{name} on a Partial\(\) DTensor: the variant is not linear"):
            local_results(x, Partial(), 2, fn)
    with pytest.raises(ValueError, match=rf"{name} on a DTensor supports Shard\(0\).*received Shard\(dim=1\)"):
        local_results(x, Shard(1), 2, fn)


def test_word_dropout_and_the_fused_op_refuse_dtensors_clearly():
    x = torch.randn(4, 6)
    with fake_rank(0, 2) as mesh:
        d = DTensor.from_local(x[:2], mesh, [Shard(0)], run_check=False, shape=x.shape, stride=x.stride())
        with pytest.raises(TypeError, match=r"fused_bias_act_dropout_add \(`x`\) does not take DTensor"):
            F.fused_bias_act_dropout_add(d, None, d, 0.3, seed=1)
        with pytest.raises(TypeError, match=r"embedding_dropout \(`weight`\) does not take DTensor"):
            F.embedding_dropout(torch.tensor([0, 1]), d, 0.3, seed=1)


def test_a_dtensor_never_reaches_the_cpu_kernel_as_a_raw_pointer():
    """A DTensor reports data_ptr 0: handing it to the C kernel crashed the process; now a clear error."""
    from dropkit.kernels import cpu

    if not cpu.available():
        pytest.skip(f"no compiled kernel: {cpu.status()[1]}")
    x = torch.randn(4, 6)
    with fake_rank(0, 2) as mesh:
        d = DTensor.from_local(x[:2], mesh, [Shard(0)], run_check=False, shape=x.shape, stride=x.stride())
        with pytest.raises(TypeError, match="needs `x` to be a plain tensor with its own memory"):
            cpu.dropout_mul(d, 0.5, 2.0, 1, 0, 0)


def test_batch_shard_offset_composes_with_tensor_parallel():
    """Data parallel (batch_shard) around a TP DTensor: the DP shard's offset is added to the TP-global index."""
    x = torch.randn(6, 8)
    ref = F.dropout(x, 0.5, seed=4)
    with dropkit.rng.batch_shard(3):
        outs = local_results(x[3:], Shard(1), 2, lambda d: F.dropout(d, 0.5, seed=4))
    assert torch.equal(torch.cat([y for y, _ in outs], 1), ref[3:])


def test_seeded_module_draws_one_key_per_call_on_a_dtensor():
    x = torch.randn(4, 10)
    ref_mod = dropkit.nn.Dropout(0.5, seed=11)
    refs = [ref_mod(x), ref_mod(x)]
    for rank in range(2):
        mod = dropkit.nn.Dropout(0.5, seed=11)
        with fake_rank(rank, 2) as mesh:
            d = DTensor.from_local(torch.chunk(x, 2, 1)[rank], mesh, [Shard(1)], run_check=False, shape=x.shape,
                                   stride=x.stride())  # fmt: skip
            for call, ref in enumerate(refs):
                assert torch.equal(mod(d).to_local(), torch.chunk(ref, 2, 1)[rank]), call
        assert mod.rng_state.tolist() == [11, 2]


def test_inplace_dtensor_writes_the_input_and_returns_it():
    x = torch.randn(3, 7)
    ref = F.dropout(x, 0.5, seed=2)
    for rank in range(2):
        with fake_rank(rank, 2) as mesh:
            local = torch.chunk(x, 2, 1)[rank].clone()
            d = DTensor.from_local(local, mesh, [Shard(1)], run_check=False, shape=x.shape, stride=x.stride())
            assert F.dropout(d, 0.5, inplace=True, seed=2) is d
            assert torch.equal(d.to_local(), torch.chunk(ref, 2, 1)[rank])


def test_inplace_on_a_dtensor_that_requires_grad():
    """A non-leaf: written in place, the gradient carries the mask; a leaf: torch's error before any write."""
    x = torch.randn(4, 6)
    ref_grad = F.dropout(torch.ones(4, 6), 0.5, seed=2) * 3.0
    with fake_rank(1, 2) as mesh:
        local = x[:, 3:].clone().requires_grad_()
        d = DTensor.from_local(local, mesh, [Shard(1)], run_check=False, shape=x.shape, stride=x.stride()) * 3.0
        y = F.dropout(d, 0.5, inplace=True, seed=2)
        assert y is d
        y.to_local().sum().backward()
        assert torch.equal(local.grad, ref_grad[:, 3:])
        leaf = DTensor.from_local(x[:, 3:].clone(), mesh, [Shard(1)], run_check=False, shape=x.shape,
                                  stride=x.stride()).requires_grad_()  # fmt: skip
        before = leaf.to_local().clone()
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            F.dropout(leaf, 0.5, inplace=True, seed=2)
        assert torch.equal(leaf.to_local(), before)


def test_eval_p0_p1_on_dtensor_keep_their_meaning():
    x = torch.randn(4, 6)
    with fake_rank(0, 2) as mesh:
        d = DTensor.from_local(x[:2], mesh, [Shard(0)], run_check=False, shape=x.shape, stride=x.stride())
        assert F.dropout(d, 0.5, training=False) is d
        assert F.dropout(d, 0.0) is d
        z = F.dropout(d, 1.0)
        assert isinstance(z, DTensor) and not z.to_local().any()
        assert torch.equal(F.dropout(d, 0.5, training=False, scaling="classic").to_local(), x[:2] * 0.5)


def test_a_two_dimensional_mesh_is_refused_before_the_key_is_drawn():
    gen = dropkit.SeedGenerator(3)
    with fake_rank(0, 4, (2, 2)) as mesh:
        d = DTensor.from_local(torch.ones(2, 3), mesh, [Shard(0), Replicate()], run_check=False)
        with pytest.raises(ValueError, match=r"1-D device mesh.*received a 2-D mesh of shape \(2, 2\)"):
            F.dropout(d, 0.5, seed=gen)
    assert gen.calls == 0  # errors before effects: the stream did not advance


def test_a_strided_shard_is_refused_with_the_accepted_placements():
    from torch.distributed.tensor.placement_types import _StridedShard

    with fake_rank(0, 2) as mesh:
        d = DTensor.from_local(torch.ones(2, 3), mesh, [_StridedShard(0, split_factor=2)], run_check=False)
        with pytest.raises(ValueError, match=r"Shard\(d\), Replicate\(\) and Partial\(\); received _StridedShard"):
            F.dropout(d, 0.5, seed=1)


def test_a_local_tensor_that_does_not_match_torchs_sharding_is_refused():
    with fake_rank(1, 2) as mesh:  # rank 1 of 5 rows holds rows 3..4 (2 rows), not 3
        d = DTensor.from_local(torch.ones(3, 2), mesh, [Shard(0)], run_check=False, shape=(5, 2), stride=(2, 1))
        with pytest.raises(ValueError, match=r"local tensor has shape \(3, 2\).*gives this rank \(2, 2\)"):
            F.dropout(d, 0.5, seed=1)


def test_torch_compile_runs_the_dtensor_call_eagerly_and_fullgraph_names_the_reason():
    x = torch.randn(4, 8)

    def f(d):
        return F.dropout(d, 0.5, seed=3) * 2

    with fake_rank(1, 2) as mesh:
        d = DTensor.from_local(x[:, 4:].clone(), mesh, [Shard(1)], run_check=False, shape=x.shape, stride=x.stride())
        try:
            assert torch.equal(torch.compile(f)(d).to_local(), f(d).to_local())
            torch._dynamo.reset()  # a fresh compile of f, not the cached frame
            takes_reason = "reason" in inspect.signature(torch.compiler.disable).parameters  # torch >= 2.7
            why = "dropkit's DTensor dropout runs eagerly" if takes_reason else "dtensor_dropout"
            with pytest.raises(Exception, match=why):
                torch.compile(f, fullgraph=True)(d)
        finally:
            torch._dynamo.reset()


def test_is_dtensor():
    assert not dkd.is_dtensor(torch.ones(2))
    assert not dkd.is_dtensor(torch.nn.Parameter(torch.ones(2)))
    with fake_rank(0, 2) as mesh:
        assert dkd.is_dtensor(DTensor.from_local(torch.ones(2), mesh, [Replicate()]))


@pytest.mark.parametrize("budget", [1, 7, 1 << 22])
def test_local_keep_mask_is_the_full_masks_box(monkeypatch, budget):
    """Every box of the mask, gathered with or without splitting into kernel calls, is the full mask's slice."""
    monkeypatch.setattr(dkd, "_MIN_BUDGET", budget)
    monkeypatch.setattr(dkd, "_box_mask", _box_mask_small_budget(budget))
    g = torch.Generator().manual_seed(0)
    key = key_tensor(99, 3)
    for shape in [(6, 5, 4), (3, 17), (2, 1, 3, 9)]:
        full = torch.ops.dropkit.keep_mask(key, list(shape), 0.5, 40, "cpu")
        for _ in range(6):
            lo = [int(torch.randint(0, n, (1,), generator=g)) for n in shape]
            ext = [int(torch.randint(1, n - o + 1, (1,), generator=g)) for n, o in zip(shape, lo)]
            box = dkd.local_keep_mask(key, 0.5, shape, lo, ext, offset=40)
            assert torch.equal(box, full[tuple(slice(o, o + e) for o, e in zip(lo, ext))]), (shape, lo, ext)


def _box_mask_small_budget(budget):
    """``_box_mask`` with ``budget`` as the split size (the real call uses at least 4 x the box)."""
    orig = dkd._box_mask

    def call(key, p, base, shape, strides, device, _budget):
        return orig(key, p, base, shape, strides, device, budget)

    return call


def test_local_keep_mask_rejects_a_box_outside_the_mask():
    with pytest.raises(ValueError, match=r"box \(offset \(0, 3\), shape \(2, 2\)\) must lie inside the mask shape \(2, 4\)"):
        dkd.local_keep_mask(key_tensor(1), 0.5, (2, 4), (0, 3), (2, 2))


# ---------------------------------------------------------------------------
# Two gloo processes on the CPU
# ---------------------------------------------------------------------------
SCENARIOS = ["masks", "key_mismatch", "tp", "fsdp"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run tests/dist_worker.py on 2 ranks (gloo, file:// rendezvous, no port) once; load a scenario's results."""
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(WORKER), "{rank}", "2", str(out / "rendezvous"), str(out), *SCENARIOS]
    procs = [
        subprocess.Popen([c.format(rank=r) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process run did not finish in 240 s")
    if any(proc.returncode for proc in procs):
        pytest.fail("the 2-process run failed:\n" + "\n".join(logs[-1:] + logs[:1])[-6000:])

    def load(name: str) -> list[dict]:
        results = [torch.load(out / f"{name}-{r}.pt", weights_only=False) for r in range(2)]
        for r, res in enumerate(results):
            if "error" in res:
                pytest.fail(f"scenario {name!r} failed on rank {r}:\n{res['error']}")
        return results

    return load


def assert_training_equals_one_process(results: list[dict], seed, key: str, expected: str, atol: float) -> None:
    """Both ranks' losses and (full) parameters equal a 1-process run of the same model and data."""
    ref_model = W.mlp(seed)
    ref_losses = W.train(ref_model, W.batches())
    ref_params = W.full_params(ref_model)
    for res in results:
        got = res[seed]
        assert got[key] == expected
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref_losses), rtol=1e-6, atol=atol)
        for k, v in ref_params.items():
            torch.testing.assert_close(got["params"][k], v, rtol=1e-6, atol=atol, msg=k)


@pytest.mark.parametrize("seed", [1234, None], ids=["seeded", "unseeded"])
def test_tensor_parallel_mlp_training_equals_one_process(two_ranks, seed):
    """ColwiseParallel(use_local_output=False) -> ReLU -> Dropout -> RowwiseParallel, 3 SGD steps, TP-2 == TP-1."""
    # the Dropout saw a DTensor Shard(-1): the DTensor path ran
    assert_training_equals_one_process(two_ranks("tp"), seed, "dropout_input", ("DTensor", "(Shard(dim=1),)"), 1e-7)


def test_local_index_masks_control_differs_from_one_process(two_ranks):
    """The control: masking each shard with LOCAL indices (a per-rank stream) does not reproduce TP-1."""
    ref_losses = W.train(W.mlp(1234), W.batches())
    got = two_ranks("tp")[0]["local-index"]["losses"]
    assert max(abs(a - b) for a, b in zip(got, ref_losses)) > 1e-3


@pytest.mark.parametrize("seed", [1234, None], ids=["seeded", "unseeded"])
def test_fsdp2_training_with_batch_shard_equals_one_process_on_the_full_batch(two_ranks, seed):
    """fully_shard on each Linear and the model (CPU, gloo), half the batch per rank inside batch_shard."""
    # the parameters were sharded (FSDP2 ran)
    assert_training_equals_one_process(two_ranks("fsdp"), seed, "placements", "(Shard(dim=0),)", 1e-6)


@pytest.mark.parametrize("case", sorted(W.MASK_CASES))
def test_two_process_dtensor_outputs_and_grads_equal_the_single_tensor_call(two_ranks, case):
    make, shape = W.MASK_CASES[case]
    x = W.case_input(shape).requires_grad_()
    y = make()(x)
    (y * W.case_weight(shape)).sum().backward()
    for res in two_ranks("masks"):
        for pname, pl in W.placements().items():
            got = res[(case, pname)]
            want = Shard(pl.dim % len(shape)) if isinstance(pl, Shard) else pl
            assert got["placements"] == str((want,)), pname
            assert torch.equal(got["y"], y.detach()), pname
            assert torch.equal(got["grad"], x.grad), pname
        got = res[(case, "Partial")]
        assert "Partial" in got["placements"]
        torch.testing.assert_close(got["y"], y.detach(), rtol=1e-12, atol=1e-12)


def test_two_process_inplace_on_an_uneven_shard(two_ranks):
    x = W.case_input((3, 7)).float()
    ref = F.dropout(x, 0.5, seed=2)
    for rank, res in enumerate(two_ranks("masks")):
        got = res[("inplace", "Shard(1)")]
        assert got["same"] and got["local"] == (3, 4 - rank)
        assert torch.equal(got["y"], ref)


def test_ranks_with_different_generator_states_raise_on_every_rank(two_ranks):
    for res in two_ranks("key_mismatch"):
        assert res["raised"] is not None
        assert "drew different keys" in res["raised"] and "torch.manual_seed" in res["raised"]
