"""The dropout fold of dropkit.mc.predict: kernels/cpu/mask_fold.c against its torch reference, and the
folded predictions against the unfolded ones drawn with the very same masks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dropkit
from dropkit import kernels
from dropkit import mc
from dropkit.mc import _fold as _mc_fold
from dropkit.mc import _probe as _mc_probe
from dropkit.mc import _sample as _mc_sample
from dropkit.kernels import reference

needs_kernel = pytest.mark.skipif(not kernels.mask_fold_compiled(), reason="compiled CPU kernel not available")


def fold_inputs(T, B, D, O, K, R, P, seed=0, consistent=False, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, K, O, generator=g)
    X = torch.randn(B, D, K, R, P, generator=g)
    rows = 1 if consistent else B
    mask = (torch.rand(T, rows, D, generator=g) > 0.5).float() * scale
    return A, X, mask.expand(T, B, D) if consistent else mask


# ------------------------------------------------------------------ kernel vs reference


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 6), B=st.integers(1, 3), D=st.integers(1, 13), O=st.integers(1, 70), K=st.integers(1, 4),
       R=st.sampled_from([1, 2, 4]), P=st.integers(1, 20), consistent=st.booleans())
def test_kernel_matches_reference(T, B, D, O, K, R, P, consistent):
    A, X, mask = fold_inputs(T, B, D, O, K, R, P, consistent=consistent)
    got = kernels.cpu.mask_fold(A, X, mask, 2.0, R, P)
    want = reference.mask_fold(A, X, mask, 2.0, R, P)
    assert got.shape == (T, B, P * O)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * D * K)


@needs_kernel
@pytest.mark.parametrize("shape", [(50, 3, 256, 256, 1, 1, 1), (7, 2, 32, 64, 9, 4, 49), (5, 2, 30, 40, 9, 1, 196)])
def test_kernel_same_bits_for_every_thread_count_and_isa(shape):
    """Every output is summed in one fixed order: no dependence on threads, tiles or vector width."""
    A, X, mask = fold_inputs(*shape)
    R, P = shape[5], shape[6]
    threads, isa = torch.get_num_threads(), kernels.cpu.isa()
    try:
        torch.set_num_threads(1)
        base = kernels.cpu.mask_fold(A, X, mask, 2.0, R, P)
        torch.set_num_threads(2)
        assert torch.equal(kernels.cpu.mask_fold(A, X, mask, 2.0, R, P), base)
        for name in kernels.cpu.supported_isas():
            kernels.cpu.set_isa(name)
            assert torch.equal(kernels.cpu.mask_fold(A, X, mask, 2.0, R, P), base), name
    finally:
        torch.set_num_threads(threads)
        kernels.cpu.set_isa(None if isa == kernels.cpu.supported_isas()[-1] else isa)


@needs_kernel
@pytest.mark.parametrize("R", [1, 4])
def test_kernel_bias_and_relu_epilogue(R):
    A, X, mask = fold_inputs(5, 2, 10, 37, 2, R, 3)
    bias = torch.randn(37)
    got = kernels.cpu.mask_fold(A, X, mask, 2.0, R, 3, bias, True)
    want = reference.mask_fold(A, X, mask, 2.0, R, 3, bias, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert (got == 0).any() and (got > 0).any()
    plain = kernels.cpu.mask_fold(A, X, mask, 2.0, R, 3)
    assert torch.equal(got, (plain.view(5, 2, 3, 37) + bias).clamp_min(0).view(5, 2, -1))  # same rounding steps
    with pytest.raises(ValueError, match="bias"):
        kernels.cpu.mask_fold(A, X, mask, 2.0, R, 3, torch.randn(36))


@needs_kernel
def test_kernel_shared_example_input_and_zero_scale():
    A, X, mask = fold_inputs(4, 3, 9, 20, 1, 1, 1)
    X1 = X[:1]
    torch.testing.assert_close(kernels.cpu.mask_fold(A, X1, mask, 2.0, 1, 1), reference.mask_fold(A, X1, mask, 2.0, 1, 1))
    zeros = torch.zeros_like(mask)  # p = 1: every unit dropped
    assert torch.equal(kernels.cpu.mask_fold(A, X, zeros, 0.0, 1, 1), torch.zeros(4, 3, 20))


@pytest.mark.parametrize("impl", ["reference", pytest.param("cpu", marks=needs_kernel)])
def test_non_binary_mask_is_an_error(impl):
    A, X, mask = fold_inputs(3, 2, 8, 5, 1, 1, 1)
    mask[1, 1, 3] = 1.5  # neither 0 nor scale
    fn = reference.mask_fold if impl == "reference" else kernels.cpu.mask_fold
    with pytest.raises(ValueError, match="0 or scale"):
        fn(A, X, mask, 2.0, 1, 1)


@needs_kernel
def test_kernel_rejects_bad_arguments():
    A, X, mask = fold_inputs(3, 2, 8, 5, 1, 1, 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        kernels.cpu.mask_fold(A, X, mask, 2.0, 2, 1)
    with pytest.raises(TypeError, match="float32"):
        kernels.cpu.mask_fold(A.double(), X, mask, 2.0, 1, 1)


# ------------------------------------------------------------------ planning


def lab_cnn(drop2d=dropkit.nn.Dropout2d, seed=None, pool=None, stride=1, padding=1, dilation=1):
    kw = {} if seed is None else {"seed": seed}
    kw2 = {} if seed is None else {"seed": seed + 1}
    kw3 = {} if seed is None else {"seed": seed + 2}
    pool = pool or torch.nn.MaxPool2d(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), drop2d(0.5, **kw), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=padding, stride=stride, dilation=dilation), torch.nn.ReLU(),
        drop2d(0.3, **kw2), pool, torch.nn.Flatten(), torch.nn.LazyLinear(5), torch.nn.ReLU(),
        dropkit.nn.Dropout(0.5, **kw3), torch.nn.Linear(5, 3),
    )


def lab_mlp(drop=dropkit.nn.Dropout, seed=None):
    kw = (lambda i: {}) if seed is None else (lambda i: {"seed": seed + i})
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 24), torch.nn.ReLU(), drop(0.5, **kw(0)), torch.nn.Linear(24, 16),
        torch.nn.ReLU(), drop(0.4, **kw(1)), torch.nn.Linear(16, 3),
    )


def plan(model, x, samples=50):
    with torch.no_grad():
        model.eval()(x)  # materialise lazy layers
    r = _mc_probe.probe(model, (x[:2],))
    return _mc_fold.plan_fold(dict(model.named_modules()), r.paths[0], set(r.paths), samples)


def test_plans_for_the_lab_cnn():
    p = plan(lab_cnn(), torch.randn(4, 1, 12, 12))
    assert (p.start, p.conv, p.relu, p.pool, p.end) == (2, 4, True, 7, 8)
    assert p.paths[p.pool] == "7"
    p = plan(lab_cnn(pool=torch.nn.AvgPool2d(2)), torch.randn(4, 1, 12, 12))
    assert (p.conv, p.pool, p.end) == (4, None, 6)  # only a max-pool whose windows tile the map is fused
    model = lab_cnn()
    model[5] = torch.nn.Tanh()  # after the conv: not fused, and the fold stops before it (no pool fusion)
    p = plan(model, torch.randn(4, 1, 12, 12))
    assert (p.relu, p.pool, p.end) == (False, None, 5)


@pytest.mark.parametrize("case", ["subclass", "hook", "gelu", "groups", "same-padding", "1x1", "few-samples",
                                  "elementwise", "mlp", "not-sequential"])
def test_no_plan_outside_the_pattern(case):
    class MyDropout2d(torch.nn.Dropout2d):
        def forward(self, x):
            return super().forward(x) * 2

    x = torch.randn(4, 1, 12, 12)
    model, samples = lab_cnn(), 50
    if case == "subclass":
        model[2] = MyDropout2d(0.5)
    elif case == "hook":
        model[4].register_forward_hook(lambda m, a, o: None)
    elif case == "gelu":
        model[3] = torch.nn.GELU()  # dropout, GELU (not homogeneous), then the conv
    elif case == "groups":
        model[4] = torch.nn.Conv2d(6, 8, 3, padding=1, groups=2)
    elif case == "same-padding":
        model[4] = torch.nn.Conv2d(6, 8, 3, padding="same")
    elif case == "1x1":  # 1 tap: the table adds would not pay off
        model[4] = torch.nn.Conv2d(6, 8, 1)
    elif case == "few-samples":
        samples = 2
    elif case == "elementwise":
        model[2] = torch.nn.Dropout(0.5)
    elif case == "mlp":  # a Linear after element-wise dropout: one matmul is as fast (measured)
        model, x = lab_mlp(), torch.randn(4, 12)
    else:
        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.d = torch.nn.Conv2d(1, 4, 3), torch.nn.Dropout2d(0.5)
                self.b = torch.nn.Conv2d(4, 4, 3)

            def forward(self, x):
                return self.b(self.d(self.a(x))).flatten(1)

        model = Wrapped()
    assert plan(model, x, samples) is None


# ------------------------------------------------------------------ folded == unfolded, same masks


def both_ways(model, x, monkeypatch, samples=6, **kw):
    """predict with the fold and with the input repeated (no fold, no prefix): same seed, same masks."""
    with torch.no_grad():
        model.eval()(x)
    folds = []
    real = _mc_fold.run_fold
    with monkeypatch.context() as m:
        m.setattr(_mc_sample, "run_fold", lambda *a: folds.append(1) or real(*a))
        r = mc.predict(model, x, samples=samples, seed=11, output=None, **kw)
    assert folds and r.method == "fold", "the fold did not run"
    with monkeypatch.context() as m:
        m.setattr(kernels, "mask_fold_compiled", lambda device="cpu": False)
        ref = mc.predict(model, x, samples=samples, seed=11, output=None, share_prefix=False, **kw)
    return r.samples, ref.samples


def test_mlp_takes_the_shared_prefix():
    r = mc.predict(lab_mlp(), torch.randn(3, 12), samples=5, seed=0)
    assert r.method == "prefix"


@needs_kernel
@pytest.mark.parametrize("geometry", [{}, {"stride": 2}, {"padding": 0}, {"dilation": 2, "padding": 2},
                                      {"pool": torch.nn.MaxPool2d((2, 1))}, {"pool": torch.nn.AvgPool2d(2)}])
@pytest.mark.parametrize("drop2d", [dropkit.nn.Dropout2d, torch.nn.Dropout2d])
def test_folded_cnn_equals_unfolded(geometry, drop2d, monkeypatch):
    seed = 3 if drop2d is dropkit.nn.Dropout2d else None
    model = lab_cnn(drop2d, seed=seed, **geometry)
    a, b = both_ways(model, torch.randn(3, 1, 13, 11), monkeypatch)  # odd sizes: the pool drops a row / column
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_folded_consistent_masks(monkeypatch):
    model = lab_cnn(dropkit.nn.Dropout2d, seed=2)
    x = torch.randn(1, 1, 10, 10).expand(4, 1, 10, 10).contiguous()  # four copies of one input
    a, b = both_ways(model, x, monkeypatch, consistent_masks=True)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(a[:, 0], a[:, 3])  # same masks for every example


def test_reference_fold_through_predict(monkeypatch):
    """With no compiler the fold is off; the torch reference of mask_fold still gives the same samples."""
    model, x = built_cnn(seed=1, shape=(2, 1, 8, 8))
    monkeypatch.setattr(kernels, "mask_fold_compiled", lambda device="cpu": False)
    ref = mc.predict(model, x, samples=5, seed=0, output=None)
    # the fold on, its kernel the torch reference (kernels.mask_fold runs the module for_device("cpu") names)
    monkeypatch.setattr(kernels, "mask_fold_compiled", lambda device="cpu": True)
    monkeypatch.setattr(kernels, "for_device", lambda device: kernels.backend("reference"))
    folds = []
    real = _mc_fold.run_fold
    monkeypatch.setattr(_mc_sample, "run_fold", lambda *a: folds.append(1) or real(*a))
    folded = mc.predict(model, x, samples=5, seed=0, output=None)
    assert folds
    torch.testing.assert_close(folded.samples, ref.samples, rtol=1e-4, atol=1e-5)


def built_cnn(seed=4, shape=(3, 1, 10, 10)):
    """A seeded lab-like CNN with its lazy layer materialised, and an input for it."""
    model, x = lab_cnn(dropkit.nn.Dropout2d, seed=seed), torch.randn(shape)
    with torch.no_grad():
        model.eval()(x)
    return model, x


@needs_kernel
def test_non_finite_input_takes_the_general_path():
    model, x = built_cnn()
    x[1, 0, 2, 2] = float("nan")
    r = mc.predict(model, x, samples=4, seed=11, output=None)
    assert r.method != "fold"
    assert torch.isnan(r.samples[:, 1]).all()  # NaN * 0 is NaN, as in the real network
    assert not torch.isnan(r.samples[:, [0, 2]]).any()


@needs_kernel
def test_non_binary_mask_falls_back(monkeypatch):
    model, x = built_cnn()
    calls = []
    real = _mc_fold._draw_masks

    def odd(*args):
        calls.append(1)
        m = real(*args).clone()
        m[0, 0, 0] = 0.3
        return m

    monkeypatch.setattr(_mc_fold, "_draw_masks", odd)
    r = mc.predict(model, x, samples=4, seed=0)
    assert calls and r.method == "prefix" and r.samples.shape == (4, 3, 3)


def test_probe_cache_follows_the_model():
    model = lab_mlp(torch.nn.Dropout)
    x = torch.randn(3, 12)
    mc.predict(model, x, samples=3)
    for i in (3, 6):
        model[i].p = 0.0  # no dropout left: the cached probe must not be reused
    with pytest.raises(mc.NoDropoutError):
        mc.predict(model, x, samples=3)
    model[6].p = 0.5
    assert mc.predict(model, x, samples=3).samples.shape == (3, 3, 3)
    mc.clear_cache()
