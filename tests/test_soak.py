"""A short `make soak` (the full one is a command: `make soak`, figures in docs/reliability.md)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

from scripts.layout import PROJECT


def test_a_one_minute_soak_rides_through_a_crash_and_refuses_every_bad_image(built, tmp_path):
    done = subprocess.run([sys.executable, "-m", "scripts", "soak", "--flavor", "local", "--seconds", "60",
                           "--concurrency", "4", "--output", str(tmp_path), "--json"],
                          capture_output=True, text=True, cwd=PROJECT, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    lines = done.stdout.splitlines()
    (line,) = [entry for entry in lines if entry.startswith("soak: ")]
    figures = json.loads(lines[-1])
    print(line)
    assert figures["restarts"] == 1 and 0 < figures["recovery_s"] < 60, figures
    assert figures["good"] > 100 and figures["good_failed"] == 0, figures
    assert figures["bad_sent"] > 0 and figures["bad_rejected"] == figures["bad_sent"], figures
    assert not math.isnan(figures["rss_growth_pct"]) and not math.isnan(figures["p99_ms"])
    with open(tmp_path / "soak.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 20 and all(row["rss_mib"] for row in rows[:3])
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    # The exit code is the goals': 0 only if memory grew less than 5% too (a figure, not asserted here).
    assert done.returncode == (0 if figures["rss_growth_pct"] < 5 else 1)
