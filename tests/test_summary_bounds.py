"""`convzoo summary` over its numeric flags: any value ends in a table (exit 0) or in one
line on stderr (exit 2), never in a traceback, and never in a large allocation."""

from __future__ import annotations

import contextlib
import io
import resource

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convzoo.cli import main

MODELS = ["resnet18", "alexnet", "googlenet", "nin", "vgg11", "densenet121"]
# Peak resident memory may grow by this much over all the examples (the models are
# built on the meta device; a real allocation of a refused size would be gigabytes).
RSS_GROWTH_LIMIT = 512 * 2**20


# One intra-op thread: these models are tiny, and the machine may be shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def _big(top: int):
    """Positive integers spread over every order of magnitude up to ``top``."""
    return st.integers(0, len(str(top)) - 1).flatmap(
        lambda e: st.integers(10**e, min(top, 10 ** (e + 1) - 1))
    )


widths = st.one_of(
    st.floats(min_value=1e-6, max_value=4.0),
    st.floats(min_value=4.0, max_value=1e15),
    st.sampled_from(["1e9", "1e300", "inf", "0.0001"]),
)


def run_summary(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors: its usage line and exit 2
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    model=st.sampled_from(MODELS),
    small=st.booleans(),
    width=st.none() | widths,
    size=st.none() | st.tuples(_big(10**6), _big(10**7), _big(10**7)),
    classes=st.none() | _big(10**30),
)
def test_summary_flags_end_in_a_table_or_one_line(model, small, width, size, classes):
    argv = ["summary", model]
    if small:
        argv.append("--small-input")
    if width is not None:
        argv += ["--width", str(width)]
    if size is not None:
        argv += ["--input", "x".join(map(str, size))]
    if classes is not None:
        argv += ["--num-classes", str(classes)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    code, out, err = run_summary(argv)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 0:
        assert out.splitlines()[0].startswith(f"{model}, input ") and err == ""
    else:  # one line (argparse's errors come after its usage line)
        lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
        assert out == "" and len(lines) == 1, (argv, err)
    assert grown < RSS_GROWTH_LIMIT, (argv, grown)


def test_summary_of_a_huge_width_is_one_line():
    code, out, err = run_summary(["summary", "resnet18", "--width", "1e9"])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "resnet18: cannot build it" in err


def test_summary_builds_no_weights():
    # vgg16 at width 2: 545M parameters, 2 GiB if they were allocated.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    code, out, _ = run_summary(["summary", "vgg16", "--width", "2", "--input", "3x64x64"])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert code == 0 and "total params: 545,206,888 " in out
    assert grown < RSS_GROWTH_LIMIT
