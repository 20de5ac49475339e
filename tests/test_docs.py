"""docs/scaling.md rests on measured figures: every figure of its "Measured on one machine"
table appears in docs/benchmarks.md, and its arithmetic follows from them."""

from __future__ import annotations

import math
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _measured_table() -> str:
    text = (DOCS / "scaling.md").read_text()
    return text.split("## Measured on one machine", 1)[1].split("\n## ", 1)[0]


def test_the_measured_figures_are_the_benchmarks() -> None:
    benchmarks = (DOCS / "benchmarks.md").read_text()
    figures = set(re.findall(r"\b\d{1,3}(?:,\d{3})+\b", _measured_table()))
    assert len(figures) >= 8, figures
    missing = sorted(f for f in figures if f not in benchmarks)
    assert not missing, f"in scaling.md but not in benchmarks.md: {missing}"
    for phrase in ("175.1", "547 MiB", "961", "48.6", "228 MiB"):
        assert phrase in benchmarks, phrase


def test_the_process_counts_follow_from_the_measured_rates() -> None:
    text = (DOCS / "scaling.md").read_text()
    rows = {
        "collector processes": 13_478,
        "speed-layer processes, 50 rules": 6_353,
        "speed-layer processes, no rules": 35_244,
    }
    for label, per_process in rows.items():
        line = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
        cells = [c.strip() for c in line.strip("|").split("|")][1:]
        for multiple, cell in zip((1, 10, 100, 1000), cells, strict=True):
            want = max(1, math.ceil(2 * 1_000 * multiple / per_process))
            assert int(cell.split()[0]) == want, (label, multiple, cell, want)
