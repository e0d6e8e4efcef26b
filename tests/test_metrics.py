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
