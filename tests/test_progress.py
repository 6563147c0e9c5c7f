"""Progress bars: tqdm's on a terminal, plain timed lines on a file or a pipe (no carriage-return redraws)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tqdm import tqdm

from wsvs.runtime import progress as progress_module
from wsvs.runtime.progress import PlainProgress, format_duration, progress_bar


class Clock:
    """A stand-in for the module's ``time``: ``monotonic`` is what the test sets."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", fake)
    return fake


def test_plain_lines_every_interval_and_at_the_end(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    # 100 items a second apart with a 30 s interval: lines at 30, 60 and 90 s, and the end line at 100 s.
    bar = progress_bar(range(100), desc="segment-videos", unit="video")
    assert isinstance(bar, PlainProgress)  # stderr is captured here, not a terminal
    for _ in bar:
        clock.now += 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["segment-videos: 30/100 videos (30%) 30s, eta 1m10s",
                     "segment-videos: 60/100 videos (60%) 1m00s, eta 40s",
                     "segment-videos: 90/100 videos (90%) 1m30s, eta 10s",
                     "segment-videos: 100/100 videos (100%) 1m40s"]


def test_resumed_bar_estimates_from_this_run(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    # 40 of 100 were done before: 30 more in 30 s leave 30 to go, 30 s, not the 70 s the whole count would say.
    with progress_bar(total=100, initial=40, desc="world", unit="item") as bar:
        for _ in range(30):
            clock.now += 1
            bar.update()
        bar.set_postfix(requests=12)
        bar.update(30)
    assert capsys.readouterr().err.splitlines() == ["world: 70/100 items (70%) 30s, eta 30s",
                                                    "world: 100/100 items (100%) 30s, requests=12"]


def test_short_bar_not_left_prints_nothing(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    for _ in progress_bar(range(5), desc="eval", unit="img", leave=False):
        clock.now += 1
    with progress_bar(desc="segment video", unit="frame", leave=False) as bar:
        bar.update(40)
    with progress_bar(range(3), desc="bench", unit="backend", disable=True) as bar:
        clock.now += 60
        list(bar)
    assert capsys.readouterr().err == ""


def test_long_bar_not_left_says_where_it_ended(clock: Clock, capsys: pytest.CaptureFixture) -> None:
    with progress_bar(desc="segment video", unit="frame", leave=False) as bar:
        for _ in range(45):
            clock.now += 1
            bar.update()
    assert capsys.readouterr().err.splitlines() == ["segment video: 30 frames 30s", "segment video: 45 frames 45s"]


def test_terminal_gets_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bar(total=2, desc="world", unit="item", disable=True) as bar:
        assert isinstance(bar, tqdm)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (62, "1m02s"), (3725, "1h02m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_command_to_a_pipe_writes_plain_lines(tmp_path: Path) -> None:
    """`wsvs world` with stderr to a pipe: its bar is one plain line, no redraws."""
    config = tmp_path / "tiny.yaml"
    config.write_text("classes: [ant, bee]\ntrain_images: 4\nval_images: 2\nvideos_per_class: 1\n"
                      "misleading_per_class: 0\nvideo_frames: [12, 12]\n")
    result = subprocess.run([sys.executable, "-m", "wsvs.runtime.cli", "world", "--out", str(tmp_path / "world"),
                             "--config", str(config), "--workers", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("world: 8/8 items (100%) "), result.stderr
