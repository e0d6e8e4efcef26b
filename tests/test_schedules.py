"""dropkit.schedules: factors per step, subsets, state_dict round trip, specs."""

import math

import pytest
from torch import nn

import dropkit
from dropkit import schedules


def model():
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 8), dropkit.nn.Dropout(0.2), nn.Linear(8, 2))


def run(sched, n):
    out = [sched.get_rates()]
    for _ in range(n):
        sched.step()
        out.append(sched.get_rates())
    return out


def test_early_linear_and_constant():
    m = model()
    rates = run(schedules.early(m, steps=4), 5)
    assert [r[0] for r in rates] == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    assert rates[2][1] == pytest.approx(0.1)  # each layer scaled from its own base rate
    assert m[1].p == 0.0 and m[3].p == 0.0
    m = model()
    assert [r[0] for r in run(schedules.early(m, steps=2, mode="constant"), 3)] == [0.5, 0.5, 0.0, 0.0]


def test_late_and_ramps():
    assert [r[0] for r in run(schedules.late(model(), start=2), 3)] == [0.0, 0.0, 0.5, 0.5]
    assert [r[0] for r in run(schedules.linear_ramp(model(), 4), 5)] == pytest.approx([0, 0.125, 0.25, 0.375, 0.5, 0.5])
    cos = [r[0] for r in run(schedules.cosine_ramp(model(), 4), 4)]
    assert cos == pytest.approx([0.5 * (1 - math.cos(math.pi * t / 4)) / 2 for t in range(5)])
    down = [r[0] for r in run(schedules.linear_ramp(model(), 2, start=1.0, end=0.5), 2)]
    assert down == pytest.approx([0.5, 0.375, 0.25])
    keep = [1 - r[0] for r in run(schedules.dropblock_ramp(model(), 2), 2)]
    assert keep == pytest.approx([1.0, 0.75, 0.5])  # keep probability from 1 down to 1 - p


def test_subset_only():
    m = model()
    schedules.early([m[3]], steps=1).step()
    assert m[1].p == 0.5 and m[3].p == 0.0


def test_state_dict_round_trip():
    m = model()
    s = schedules.early(m, steps=10)
    for _ in range(3):
        s.step()
    state = s.state_dict()
    m2 = model()
    s2 = schedules.early(m2, steps=10)
    s2.load_state_dict(state)
    assert s2.last_step == 3 and s2.get_rates() == pytest.approx(s.get_rates())
    s.step(), s2.step()
    assert s2.get_rates() == pytest.approx(s.get_rates())
    with pytest.raises(ValueError, match="base rates"):
        schedules.early([m2[1]], 3).load_state_dict(state)


def test_depthwise_drop_path():
    assert not hasattr(schedules, "drop_path_rates")  # one home: dropkit.functional.drop_path_rates
    # one implementation of the rule: the functional one (only one module differs: it gets p_max)
    for p_max, depth in ((0.3, 4), (0.1, 12), (0.25, 7)):
        mods = [nn.Dropout(0.0) for _ in range(depth)]
        assert schedules.depthwise_drop_path(mods, p_max) == dropkit.functional.drop_path_rates(p_max, depth)
    assert schedules.depthwise_drop_path([nn.Dropout(0.0)], 0.3) == [0.3]
    blocks = [nn.Dropout(0.0) for _ in range(3)]
    assert schedules.depthwise_drop_path(blocks, 0.2) == pytest.approx([0.0, 0.1, 0.2])
    assert blocks[2].p == pytest.approx(0.2)


def test_from_spec_and_errors():
    m = model()
    s = schedules.from_spec("early:linear:500", m)
    assert isinstance(s, schedules.DropoutSchedule) and s.factor(250) == 0.5
    assert schedules.from_spec("cosine:10:0:1", model()).factor(10) == pytest.approx(1.0)
    assert schedules.from_spec("late:3", model()).factor(2) == 0.0
    for bad in ("early:500", "warp:3", "linear:x", "", "early:sideways:5"):
        with pytest.raises(ValueError):
            schedules.from_spec(bad, model())
    with pytest.raises(ValueError, match="no dropout layer"):
        schedules.early(nn.Linear(2, 2), 5)
    with pytest.raises(TypeError, match="`p`"):
        schedules.early([nn.Linear(2, 2)], 5)


def test_load_state_dict_validates_before_changing_anything():
    """issue #13: rates in [0, 1], finite factors, missing keys named."""
    m = model()
    s = schedules.early(m, 10)
    s.step()
    before = (s.last_step, list(s.base_rates), s.get_rates())
    good = s.state_dict()
    with pytest.raises(ValueError, match=r"base_rates\[0\].*5\.0"):
        s.load_state_dict({**good, "base_rates": [5.0] * len(good["base_rates"])})
    with pytest.raises(ValueError, match="base_rates"):
        s.load_state_dict({**good, "base_rates": [float("nan")] * len(good["base_rates"])})
    with pytest.raises(ValueError, match="'base_rates'"):
        s.load_state_dict({"last_step": 1})
    with pytest.raises(ValueError, match="'last_step'"):
        s.load_state_dict({})
    with pytest.raises(ValueError, match="last_step"):
        s.load_state_dict({**good, "last_step": -3})
    with pytest.raises(TypeError, match="last_step"):
        s.load_state_dict({**good, "last_step": 1.5})
    with pytest.raises(TypeError, match="`state`"):
        s.load_state_dict([1, 2])
    assert (s.last_step, s.base_rates, s.get_rates()) == before
    s.load_state_dict(good)
    assert s.get_rates() == before[2]


def test_a_factor_that_is_not_finite_is_an_error_not_a_silent_zero():
    m = model()
    s = schedules.DropoutSchedule(m, lambda t: 1.0 if t < 2 else float("nan"))
    s.step()
    with pytest.raises(ValueError, match=r"factor\(2\).*nan"):
        s.step()
    assert s.last_step == 1 and s.get_rates() == [0.5, 0.2]
    with pytest.raises(ValueError, match="finite"):
        schedules.DropoutSchedule(model(), lambda t: float("inf"))
    with pytest.raises(TypeError, match="real number"):
        schedules.DropoutSchedule(model(), lambda t: "half")
