"""Learning-rate schedules, time-budget parsing and step planning."""

from __future__ import annotations

import math

import pytest

from convzoo.errors import ConfigError
from convzoo.train.schedule import ONECYCLE_DIV, Schedule, as_fraction, fit_steps
from convzoo.units import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("1h", 3600),
        ("2m30s", 150),
        ("300", 300),
        ("1.5h", 5400),
        ("0.5", 0.5),
        (" 5M ", 300),
        ("10min", 600),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5x", "m", "h5", "-1", "0", "0s", "1h-5m", "5 minutes", "nan", "inf"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ConfigError, match="time budget"):
        parse_duration(text)


def test_format_duration():
    assert format_duration(5) == "5s"
    assert format_duration(61.4) == "1m01s"
    assert format_duration(3725) == "1h02m05s"


def test_onecycle_rises_then_anneals():
    s = Schedule("onecycle", total_steps=100, warmup=0.3)
    f = [s.factor(i) for i in range(100)]
    assert f[0] == pytest.approx(1 / ONECYCLE_DIV)
    peak = max(range(100), key=f.__getitem__)
    assert peak == 30 and f[30] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:30], f[1:31], strict=True))  # rising
    assert all(a >= b for a, b in zip(f[30:-1], f[31:], strict=True))  # falling
    assert f[-1] < 1e-4  # the schedule completes


def test_cosine_warmup_and_end():
    s = Schedule("cosine", total_steps=50, warmup=0.1)
    f = [s.factor(i) for i in range(50)]
    assert f[0] == pytest.approx(1 / 6)  # linear warm-up over 5 steps
    assert f[4] == pytest.approx(5 / 6)
    assert f[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[5:-1], f[6:], strict=True))
    assert f[-1] < 0.01


def test_step_schedule_divides_at_milestones():
    s = Schedule("step", total_steps=100, milestones=[0.5, 0.75], gamma=0.1)
    assert s.factor(0) == 1.0 and s.factor(49) == 1.0
    assert s.factor(50) == pytest.approx(0.1) and s.factor(74) == pytest.approx(0.1)
    assert s.factor(75) == pytest.approx(0.01) and s.factor(99) == pytest.approx(0.01)


def test_constant_and_state_round_trip():
    s = Schedule("constant", total_steps=10, warmup=0.2)
    assert [round(s.factor(i), 4) for i in range(4)] == [0.3333, 0.6667, 1.0, 1.0]
    again = Schedule.from_state_dict(s.state_dict())
    assert [again.factor(i) for i in range(10)] == [s.factor(i) for i in range(10)]


def test_same_shape_at_any_length():
    """A recipe's schedule scaled to fewer steps keeps its shape."""
    long, short = Schedule("onecycle", 1000, 0.25), Schedule("onecycle", 100, 0.25)
    for frac in (0.0, 0.1, 0.25, 0.5, 0.9):
        assert short.factor(int(frac * 100)) == pytest.approx(
            long.factor(int(frac * 1000)), abs=0.02
        )


def test_schedule_rejects_bad_values():
    with pytest.raises(ConfigError):
        Schedule("linear", 10)
    with pytest.raises(ConfigError):
        Schedule("cosine", 0)
    with pytest.raises(ConfigError):
        Schedule("cosine", 10, warmup=1.0)


def test_warmup_in_epochs_or_fraction():
    assert as_fraction(0.1, 30, "warm-up") == 0.1
    assert as_fraction(3, 30, "warm-up") == pytest.approx(0.1)
    assert as_fraction(0, 30, "warm-up") == 0.0
    with pytest.raises(ConfigError, match="does not fit"):
        as_fraction(30, 30, "warm-up")


def _cost(s, done, spe, step_s, end_s, save_s=0.0, every=0):
    ends = math.ceil(s / spe) - done // spe
    saves = (s // every - done // every) if every else 0
    return (s - done) * step_s + ends * end_s + saves * save_s


@pytest.mark.parametrize(
    "avail, step_s, end_s, done, spe, save_s, every",
    [
        (100.0, 0.1, 2.0, 0, 50, 0.0, 0),
        (100.0, 0.1, 2.0, 120, 50, 0.0, 0),
        (37.3, 0.013, 0.9, 0, 7, 0.2, 10),
        (5.0, 1.0, 0.5, 0, 100, 0.0, 0),
        (0.5, 1.0, 0.5, 0, 100, 0.0, 0),
    ],
)
def test_fit_steps_is_the_largest_that_fits(avail, step_s, end_s, done, spe, save_s, every):
    s = fit_steps(
        avail, step_s, end_s, done=done, steps_per_epoch=spe, save_s=save_s, save_every=every
    )
    assert s >= done
    if s > done:
        assert _cost(s, done, spe, step_s, end_s, save_s, every) <= avail
    assert _cost(s + 1, done, spe, step_s, end_s, save_s, every) > avail


def test_fit_steps_nothing_fits():
    assert fit_steps(-3.0, 0.1, 1.0, done=0, steps_per_epoch=10) == 0
