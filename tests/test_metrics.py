"""dropkit.metrics on hand-computed cases."""

import math

import pytest
import torch

from dropkit import metrics

P = torch.tensor([[0.95, 0.05], [0.65, 0.35], [0.25, 0.75], [0.15, 0.85]])  # no confidence on a bin edge
Y = torch.tensor([0, 1, 1, 1])


def test_ece_by_hand():
    # confidences .95 (right), .65 (wrong), .75 (right), .85 (right)
    # 2 bins: all in (.5, 1]: |acc 3/4 - mean conf 3.2/4| = .05
    assert metrics.expected_calibration_error(P, Y, bins=2) == pytest.approx(0.05)
    # 10 bins: each example alone: (|1-.95| + |0-.65| + |1-.75| + |1-.85|) / 4 = 1.1 / 4
    assert metrics.expected_calibration_error(P, Y, bins=10) == pytest.approx(0.275)
    # 5 bins: (.6,.8] {.65 wrong, .75 right}: 2 * |.5 - .7|; (.8,1] {.95, .85}: 2 * |1 - .9|  -> .6 / 4
    assert metrics.expected_calibration_error(P, Y, bins=5) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="bins"):
        metrics.expected_calibration_error(P, Y, bins=0)


def test_nll_by_hand():
    expected = -(math.log(0.95) + math.log(0.35) + math.log(0.75) + math.log(0.85)) / 4
    assert metrics.nll(P, Y) == pytest.approx(expected)


def test_brier_by_hand():
    # 2 * (.05^2 + .65^2 + .25^2 + .15^2) = 1.02, / 4
    assert metrics.brier_score(P, Y) == pytest.approx(0.255)
    assert metrics.brier_score(torch.eye(3), torch.arange(3)) == 0.0


def test_accuracy_coverage_by_hand():
    # uncertainty 1 - conf: .05, .35 (wrong), .25, .15 -> order: ex0, ex3, ex2, ex1
    curve = metrics.accuracy_coverage(P, Y, coverages=(0.25, 0.5, 0.75, 1.0))
    assert curve == [(0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (1.0, 0.75)]
    # a custom uncertainty that ranks the wrong example first
    u = torch.tensor([0.5, 0.0, 0.6, 0.7])
    assert metrics.accuracy_coverage(P, Y, u, coverages=(0.25, 1.0)) == [(0.25, 0.0), (1.0, 0.75)]


def test_bad_shapes():
    with pytest.raises(ValueError, match="probs"):
        metrics.nll(torch.ones(3), Y)
    with pytest.raises(ValueError, match="labels"):
        metrics.nll(P, Y[:2])


@pytest.mark.parametrize("fn", [metrics.expected_calibration_error, metrics.nll, metrics.brier_score,
                                metrics.accuracy_coverage])
def test_values_are_validated(fn):
    """issue #13: labels against the class count, probabilities in [0, 1] with rows summing to 1."""
    with pytest.raises(ValueError, match=r"`labels`.*\[0, 1\].*labels\[1\]=7"):
        fn(P, torch.tensor([0, 7, 1, 1]))
    with pytest.raises(ValueError, match="`labels`.*labels\\[0\\]=-1"):
        fn(P, torch.tensor([-1, 0, 1, 1]))
    negative = P.clone()
    negative[2] = torch.tensor([-0.25, 1.25])  # sums to 1, but not probabilities
    with pytest.raises(ValueError, match=r"`probs`.*\[0, 1\].*probs\[2, 0\]=-0.25"):
        fn(negative, Y)
    with pytest.raises(ValueError, match="`probs`.*nan"):
        fn(torch.tensor([[float("nan"), 0.5]] * 4), Y)
    with pytest.raises(ValueError, match=r"`probs`.*summing to 1.*probs\[1\]"):
        fn(torch.tensor([[0.5, 0.5], [0.9, 0.3], [0.5, 0.5], [0.5, 0.5]]), Y)  # logits or unnormalised scores
    with pytest.raises(ValueError, match="`labels`"):
        fn(P, Y.bool())


def test_low_precision_softmax_rows_are_accepted():
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 10
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        probs = torch.softmax(logits.to(dtype), dim=-1)
        assert math.isfinite(metrics.nll(probs, y)) and 0 <= metrics.brier_score(probs, y) <= 2


def test_uncertainty_is_validated():
    with pytest.raises(ValueError, match="`uncertainty`"):
        metrics.accuracy_coverage(P, Y, [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="`uncertainty`.*finite"):
        metrics.accuracy_coverage(P, Y, torch.tensor([0.1, float("nan"), 0.3, 0.4]))
