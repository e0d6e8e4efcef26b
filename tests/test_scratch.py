"""The from-scratch NumPy layer (dropkit.scratch): parity with the fast path, a finite-difference gradient
check, and one name for each thing (no dropkit.reference, no dropout_rate=)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dropkit
from dropkit.scratch import DropoutLayer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (33, 9), (2, 3, 5, 7)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_same_mask_and_values_as_fast_path(dtype, shape, p):
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    layer, gen = DropoutLayer(p=p, seed=31), dropkit.SeedGenerator(31)
    for _ in range(3):  # call k of the layer = call k of a SeedGenerator (stream k)
        y = layer.forward(x)
        z = dropkit.functional.dropout(torch.from_numpy(x), p, seed=gen).numpy()
        np.testing.assert_array_equal(y != 0, z != 0)
        np.testing.assert_array_equal(y, z)


def test_classic_scaling_and_eval():
    x = np.ones((4, 4), np.float32)
    layer = DropoutLayer(0.25, seed=1, scaling="classic")
    y = layer.forward(x)
    assert set(np.unique(y)) <= {0.0, 1.0}
    np.testing.assert_allclose(layer.forward(x, training=False), 0.75 * x)
    inv = DropoutLayer(0.25, seed=1)
    assert inv.forward(x, training=False) is x


def test_backward_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5))
    w = rng.normal(size=(6, 5))  # loss = sum(w * y)
    layer = DropoutLayer(0.4, seed=8)
    layer.forward(x)
    analytic = layer.backward(w)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        for sign in (1, -1):
            xp = x.copy()
            xp[idx] += sign * eps
            fresh = DropoutLayer(0.4, seed=8)  # same seed, same first-call mask
            numeric[idx] += sign * np.sum(w * fresh.forward(xp)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_backward_matches_autograd():
    x = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    layer = DropoutLayer(0.5, seed=3)
    layer.forward(x)
    g = np.ones_like(x)
    t = torch.from_numpy(x).requires_grad_()
    dropkit.functional.dropout(t, 0.5, seed=3).backward(torch.from_numpy(g))
    np.testing.assert_array_equal(layer.backward(g), t.grad.numpy())


def test_p1_and_unseeded_layers():
    x = np.full(10, 1e30, np.float32)
    y = DropoutLayer(1.0, seed=1).forward(x)
    assert (y == 0).all() and np.isfinite(y).all()
    a, b = DropoutLayer(0.5), DropoutLayer(0.5)
    assert a.seed != b.seed


def test_errors():
    with pytest.raises(ValueError, match="`p`"):
        DropoutLayer(1.2)
    with pytest.raises(TypeError, match="dropout_rate"):
        DropoutLayer(dropout_rate=0.3)  # p is the one name of the drop probability
    with pytest.raises(ValueError, match="scaling"):
        DropoutLayer(0.5, scaling="x")
    with pytest.raises(TypeError, match="floating"):
        DropoutLayer(0.5, seed=1).forward(np.ones(3, np.int64))
    layer = DropoutLayer(0.5, seed=1)
    layer.forward(np.ones((2, 2)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones(3))


def test_old_names_are_gone():
    assert DropoutLayer(seed=5).p == 0.5
    sys.modules.pop("dropkit.reference", None)
    with pytest.raises(ModuleNotFoundError):
        import dropkit.reference  # noqa: F401


def test_the_teaching_layer_is_reachable_and_lazy():
    code = "import sys, dropkit; assert 'dropkit.scratch' not in sys.modules; print(dropkit.scratch.DropoutLayer(p=0.2).p)"
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.2"
