"""dropkit.mc.predict: only dropout stochastic, model left as found, prefix sharing, consistent masks."""

import math

import pytest
import torch
import torch.nn.functional as F

import dropkit
from dropkit import mc


def mlp(p=0.5, drop=torch.nn.Dropout):
    return torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.ReLU(), drop(p), torch.nn.Linear(32, 32), torch.nn.ReLU(), drop(p),
        torch.nn.Linear(32, 4),
    ).eval()


def snapshot(model):
    return (
        [m.training for m in model.modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [(len(m._forward_pre_hooks), len(m._forward_hooks), "forward" in m.__dict__) for m in model.modules()],
    )


def same_snapshot(a, b):
    return a[0] == b[0] and a[2] == b[2] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


X = torch.randn(5, 6)


def test_shapes_measures_and_seed():
    model = mlp()
    rng = torch.get_rng_state()
    r = mc.predict(model, X, samples=20, seed=3)
    assert torch.equal(rng, torch.get_rng_state())  # global RNG untouched
    assert r.samples.shape == (20, 5, 4) and r.mean.shape == (5, 4) and r.variance.shape == (5, 4)
    assert r.entropy.shape == r.mutual_information.shape == r.prediction.shape == (5,)
    torch.testing.assert_close(r.samples.sum(-1), torch.ones(20, 5))
    assert (r.variance > 0).any() and (r.mutual_information > 0).all()
    assert (r.mutual_information <= r.entropy + 1e-6).all() and r.entropy.max() <= math.log(4) + 1e-6
    manual = -(r.mean * r.mean.log()).sum(-1)
    torch.testing.assert_close(r.entropy, manual)
    torch.testing.assert_close(r.mutual_information, manual + (r.samples * r.samples.log()).sum(-1).mean(0))
    assert torch.equal(mc.predict(model, X, samples=20, seed=3).samples, r.samples)
    assert not torch.equal(mc.predict(model, X, samples=20, seed=4).samples, r.samples)


def test_raw_and_sigmoid_outputs():
    model = mlp()
    r = mc.predict(model, X, samples=4, seed=0, output=None)
    with pytest.raises(ValueError, match="probabilities"):
        r.entropy  # noqa: B018 (the property raises)
    binary = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    r = mc.predict(binary, X, samples=4, seed=0, output="sigmoid")
    assert r.samples.shape == (4, 5, 2)
    torch.testing.assert_close(r.samples.sum(-1), torch.ones(4, 5))


def test_batchnorm_stays_in_eval_and_model_is_left_as_found():
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3)
    )
    model[1].running_mean.fill_(3.0)
    model[1].running_var.fill_(4.0)
    model.eval()
    model[3].train()  # a mixed state must come back exactly
    before = snapshot(model)
    r = mc.predict(model, X, samples=4000, seed=0, output=None)
    assert same_snapshot(before, snapshot(model))
    with torch.no_grad():
        expected = model.eval()(X)  # BatchNorm with running stats; dropout's expectation is the identity here
    torch.testing.assert_close(r.mean, expected, atol=0.1, rtol=0.05)


def test_model_left_as_found_when_forward_raises():
    class Fails(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = torch.nn.Linear(6, 6), torch.nn.Dropout(0.5)

        def forward(self, x):
            y = self.drop(self.fc(x))
            if y.shape[0] > 2 and not torch.is_grad_enabled():
                raise KeyError("boom")
            return y

    model = Fails().eval()
    before = snapshot(model)
    with pytest.raises(KeyError):
        mc.predict(model, X, samples=3, consistent_masks=True)
    assert same_snapshot(before, snapshot(model))


def test_no_dropout_is_a_clear_error():
    with pytest.raises(mc.NoDropoutError, match="no dropout"):
        mc.predict(torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3)), X)
    with pytest.raises(mc.NoDropoutError):
        mc.predict(mlp(p=0.0), X)


class FunctionalBlock(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.fc, self.kind = torch.nn.Linear(6, 8), kind
        self.bn = torch.nn.BatchNorm1d(8)

    def forward(self, x):
        h = self.bn(self.fc(x))
        if self.kind == "torch":
            return F.dropout(h, 0.5, training=self.training)
        if self.kind == "dropkit":
            return dropkit.functional.dropout(h, 0.5, training=self.training)
        q = h.view(h.shape[0], 2, 1, 4)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.5 if self.training else 0.0).flatten(1)


@pytest.mark.parametrize("kind", ["torch", "dropkit", "attention"])
def test_functional_and_attention_dropout_inside_forward(kind):
    model = torch.nn.Sequential(FunctionalBlock(kind), torch.nn.Linear(8, 3)).eval()
    paths, calls, _ = mc.stochastic_modules(model, (X[:2],))
    assert paths == ["0"]  # attributed to the block, not to its BatchNorm
    r = mc.predict(model, X, samples=8, seed=0)
    assert not torch.equal(r.samples[0], r.samples[1])
    assert not model.training and not model[0].training


def test_transformer_layer_and_multihead_attention():
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.3, batch_first=True).eval()
    x = torch.randn(3, 4, 8)
    r = mc.predict(layer, x, samples=6, seed=0, output=None)
    assert r.samples.shape == (6, 3, 4, 8) and (r.variance > 0).all()
    assert not layer.training and not any(m.training for m in layer.modules())


def test_prefix_is_computed_once():
    model = mlp()
    rows = []
    h = model[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    mc.predict(model, X, samples=10, seed=0)
    h.remove()
    assert rows[-1] == 5  # the first Linear saw the batch once, not 10 x 5 rows
    rows.clear()
    model[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    mc.predict(model, X, samples=10, seed=0, share_prefix=False)
    assert rows[-1] == 50


def test_skip_connection_falls_back_to_repeating_the_input():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop, self.out = torch.nn.Linear(6, 6), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3)

        def forward(self, x):
            h = self.fc(x)
            return self.out(h + self.drop(torch.relu(h)))

    model = Residual().eval()
    r = mc.predict(model, X, samples=3000, seed=0, output=None)
    with torch.no_grad():
        torch.testing.assert_close(r.mean, model(X), atol=0.06, rtol=0.05)


def test_chunks_under_a_memory_budget():
    model = mlp()
    r = mc.predict(model, X, samples=7, seed=0, memory_budget=1)
    assert r.samples.shape == (7, 5, 4)
    assert not torch.equal(r.samples[0], r.samples[1])


def test_same_distribution_as_naive_loop():
    torch.manual_seed(1)
    model = mlp(p=0.3, drop=dropkit.nn.Dropout)
    x = torch.randn(2, 6)
    r = mc.predict(model, x, samples=4000, seed=0, output=None)
    model.train()
    with torch.no_grad():
        naive = torch.stack([model(x) for _ in range(4000)])
    model.eval()
    torch.testing.assert_close(r.mean, naive.mean(0), atol=0.02, rtol=0.05)
    torch.testing.assert_close(r.variance, naive.var(0, correction=0), atol=0.01, rtol=0.15)


def same_masks(r):  # identical rows give identical samples (up to GEMM rounding by row position)
    for i in range(1, r.samples.shape[1]):
        torch.testing.assert_close(r.samples[:, 0], r.samples[:, i], rtol=1e-6, atol=1e-6)


def test_consistent_masks():
    x = torch.randn(1, 6).repeat(4, 1)  # four copies of one example
    for drop in (torch.nn.Dropout, dropkit.nn.Dropout, lambda p: torch.nn.AlphaDropout(p)):
        model = mlp(drop=drop)
        r = mc.predict(model, x, samples=6, seed=0, consistent_masks=True)
        same_masks(r)
        assert not torch.equal(r.samples[0], r.samples[1])
        free = mc.predict(model, x, samples=6, seed=0)
        assert not torch.equal(free.samples[:, 0], free.samples[:, 1])
    functional = torch.nn.Sequential(FunctionalBlock("torch"), torch.nn.Linear(8, 3)).eval()
    same_masks(mc.predict(functional, x, samples=5, seed=0, consistent_masks=True))
    attention = torch.nn.Sequential(FunctionalBlock("attention")).eval()
    with pytest.raises(NotImplementedError, match="consistent_masks"):
        mc.predict(attention, x, samples=2, consistent_masks=True)


@pytest.mark.parametrize("name", ["Dropout2d", "DropBlock2d", "DropPath", "GaussianDropout", "LockedDropout"])
def test_dropkit_variants_when_available(name):
    cls = getattr(dropkit.nn, name, None)
    if cls is None:
        pytest.skip(f"dropkit.nn.{name} is not there yet (issue #5)")
    try:
        layer = cls(0.3, 3) if name == "DropBlock2d" else cls(0.3)
    except TypeError:
        pytest.skip(f"dropkit.nn.{name} takes other arguments")
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), layer, torch.nn.Flatten(), torch.nn.Linear(4 * 49, 3))
    x = torch.randn(3, 2, 7, 7)
    try:
        r = mc.predict(model.eval(), x, samples=5, seed=0)
    except mc.NoDropoutError:
        pytest.fail(f"{name} was not detected")
    except (ValueError, RuntimeError) as exc:
        pytest.skip(f"{name} does not take a (N, C, H, W) input: {exc}")
    assert not torch.equal(r.samples[0], r.samples[1])


def test_cli_on_a_lab_run_folder(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import json

    from dropkit.cli import main
    from dropkit.lab.datasets import load_dataset
    from dropkit.lab.train import RunSpec, train_run

    run = tmp_path / "run"
    train_run(RunSpec(dataset="digits", model="mlp", p=(0.5, 0.5), epochs=1, seed=0), load_dataset("digits"), run)
    assert main(["mc", str(run), "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "acc MC" in out and "H wrong" in out
    row = json.loads((run / "mc.json").read_text())
    assert row["n"] == len(load_dataset("digits").y_val) and 0 <= row["mc_ece"] <= 1 and row["entropy_wrong"] > row["entropy_correct"]
    assert (run / "mc_uncertainty.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["mc", str(tmp_path)])


def test_seed_must_be_an_int_in_the_philox_key_range():
    """issue #13: 1.5 and -1 were accepted."""
    with pytest.raises(TypeError, match="seed"):
        mc.predict(mlp(), X, samples=2, seed=1.5)
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError, match=r"`seed`.*\[0, 2\*\*64\)"):
            mc.predict(mlp(), X, samples=2, seed=bad)
    model = mlp()
    a = mc.predict(model, X, samples=2, seed=(1 << 64) - 1)
    assert torch.equal(a.samples, mc.predict(model, X, samples=2, seed=(1 << 64) - 1).samples)


class Flaky(torch.nn.Module):
    """Works while the probe runs; then raises ``error`` (the dict is not part of the probe's fingerprint)."""

    def __init__(self, error):
        super().__init__()
        self.fc, self.drop, self.out = torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)
        self.state = {"calls": 0, "error": None}
        self.error = error

    def forward(self, x):
        self.state["calls"] += 1
        if self.state["error"] is not None:
            raise self.state["error"]
        return self.out(self.drop(self.fc(x)))


@pytest.mark.parametrize("error", [RuntimeError("model is broken"), torch.OutOfMemoryError("out of memory")])
def test_a_model_error_surfaces_from_its_first_failing_forward(error):
    """issue #13: mc.predict fell back on any RuntimeError, so a broken model ran again in the slower ways
    (and an out-of-memory in prefix mode retried in repeat mode, which needs more memory)."""
    model = Flaky(error).eval()
    assert mc.predict(model, X, samples=4, seed=0).method == "prefix"  # probe and trial cached
    model.state.update(calls=0, error=error)
    with pytest.raises(type(error), match=str(error)):
        mc.predict(model, X, samples=4, seed=0)
    assert model.state["calls"] == 1


def test_a_model_error_on_a_cold_call_is_raised_not_taken_for_a_misfit():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = torch.nn.Linear(6, 8), torch.nn.Dropout(0.5)

        def forward(self, x):
            h = self.drop(self.fc(x))
            if not self.training:  # fails in sampling (the module stays in eval), not in the probe
                raise RuntimeError("eval-mode bug")
            return h

    with pytest.raises(RuntimeError, match="eval-mode bug"):
        mc.predict(Broken().eval(), X, samples=4, seed=0)


def test_consistent_masks_in_chunks_that_do_not_divide_the_samples():
    x = torch.randn(1, 6).repeat(3, 1)
    model = torch.nn.Sequential(FunctionalBlock("torch"), torch.nn.Linear(8, 3)).eval()
    r = mc.predict(model, x, samples=5, seed=0, consistent_masks=True, memory_budget=3 * 8 * 4 * 2 + 1)
    assert r.samples.shape == (5, 3, 3)
    same_masks(r)


@pytest.mark.parametrize("text", ['{"dataset": "digits', '["digits"]'])
def test_cli_names_a_corrupt_config(tmp_path, capsys, text):
    from dropkit.cli import main

    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["mc", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and str(tmp_path / "config.json") in err


def test_sparse_and_nested_inputs_are_refused_up_front():
    with pytest.raises(TypeError, match="dense"):
        mc.predict(mlp(), X.to_sparse(), samples=2)
    nested = torch.nested.nested_tensor([torch.randn(6), torch.randn(6)], layout=torch.jagged)
    with pytest.raises(TypeError, match="nested"):
        mc.predict(mlp(), nested, samples=2)
