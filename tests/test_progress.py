"""Logs that work everywhere: plain progress lines, elapsed time, closed pipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tokenred.cli import main
from tokenred.progress import LineProgress, format_duration, line_progress_factory


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_throttles_and_reports_rate_and_eta():
    clock, lines = FakeClock(), []
    bar = LineProgress("tome@ratio=0.3", 10, lines.append, interval=5.0, clock=clock)
    for _ in range(9):
        clock.now += 1.0
        bar.update(1)
    # First update, then one line per 5 s: at t=1, t=6.
    assert len(lines) == 2
    assert lines[0] == "tome@ratio=0.3: 1/10 (10%), 1.00 q/s, elapsed 1.0s, eta 9.0s"
    assert lines[1].startswith("tome@ratio=0.3: 6/10 (60%)")
    clock.now += 1.0
    bar.update(1)  # the last item always gets a line
    assert lines[-1] == "tome@ratio=0.3: 10/10 (100%), 1.00 q/s, elapsed 10.0s"
    bar.close()  # nothing new to say
    assert len(lines) == 3


def test_close_writes_the_final_count_once():
    clock, lines = FakeClock(), []
    bar = line_progress_factory(lines.append, interval=60, clock=clock)("r", 5)
    bar.update(1)
    clock.now += 2
    bar.update(2)
    assert len(lines) == 1
    bar.close()
    bar.close()
    assert lines[-1].startswith("r: 3/5 (60%), 1.50 q/s, elapsed 2.0s, eta 1.3s")
    assert len(lines) == 2


def test_format_duration():
    assert format_duration(3.21) == "3.2s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3720) == "1h02m"


def test_run_off_a_terminal_logs_lines_and_elapsed(tmp_path: Path, capsys):
    code = main(
        [
            *("run", "--reducer", "random", "--budget", "0.5", "data.limit=3"),
            *(f"output.root={tmp_path}", "output.feature_cache=false"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "random@ratio=0.5: 3/3 (100%)" in err
    assert "none@ratio=1.0: 3/3 (100%)" in err
    assert err.rstrip().splitlines()[-1].startswith("elapsed ")


def test_quick_commands_print_no_elapsed_line(capsys):
    assert main(["list", "datasets"]) == 0
    assert "elapsed" not in capsys.readouterr().err


def test_listing_into_a_closed_pipe_exits_cleanly():
    # `true` exits without reading: every write of tokenred meets a closed pipe.
    tokenred = Path(sys.executable).parent / "tokenred"
    proc = subprocess.run(
        f"'{tokenred}' list reducers | true; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
