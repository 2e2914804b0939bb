"""Progress lines: rate-limited, plain text, with percent, rate and ETA."""

from __future__ import annotations

import io
import re

import pytest

from pagerl.tracking.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_rate_limited_and_the_last_step_always_prints():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("sft", total=300, every_s=10.0, stream=out, clock=clock)
    printed = []
    for step in range(1, 301):
        clock.now += 0.1  # 10 it/s: a line every 100 steps at most
        line = progress.update(step, {"loss": 1.2345})
        if line is not None:
            printed.append(step)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(printed) == progress.lines_printed
    assert printed[-1] == 300
    times = [100.0 + 0.1 * s for s in printed]
    assert all(b - a >= 10.0 - 1e-9 for a, b in zip(times, times[1:-1]))
    assert len(printed) <= 4
    # Whole lines only: readable in a log file.
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_line_format_has_fraction_percent_metrics_rate_and_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("sft", total=300, every_s=5.0, stream=out, clock=clock)
    progress.update(0)
    clock.now += 4.0
    assert progress.update(40, {"loss": 1.2345}) is None  # not due yet
    clock.now += 1.0
    line = progress.update(50, {"loss": 1.2345})
    # 50 steps in 5 s = 10 it/s; 250 left = 25 s.
    assert line == "[sft] step 50/300 (17%) loss=1.234 10 it/s eta 0:00:25"
    assert re.fullmatch(r"\[sft\] step 50/300 \(17%\) loss=1\.234 [\d.]+ it/s eta \d+:\d\d:\d\d", line)
    clock.now += 995.0
    # 300 steps in 1000 s since the first update; done, so no ETA.
    assert progress.update(300) == "[sft] step 300/300 (100%) 3.33 s/it"


def test_slow_loops_show_seconds_per_step_and_unknown_totals_skip_eta():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("rollout", total=None, every_s=0.0, stream=out, clock=clock)
    progress.update(0)
    clock.now += 8.0
    assert progress.update(2) == "[rollout] step 2 4 s/it"


def test_disabled_reporter_prints_nothing_and_bad_arguments_fail():
    out = io.StringIO()
    progress = Progress("sft", total=3, every_s=0.0, stream=out, enabled=False)
    for step in range(1, 4):
        progress.update(step)
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="total"):
        Progress("sft", total=-1)
    with pytest.raises(ValueError, match="every_s"):
        Progress("sft", every_s=-1.0)


def test_default_stream_is_stderr(capsys):
    Progress("eval", total=1).update(1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("[eval] step 1/1 (100%)")
