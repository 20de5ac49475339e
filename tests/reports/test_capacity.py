"""The capacity report on simulated history whose disk growth per service is known: the
days to threshold it reports against the truth, its CSV tables, and the HTML in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from playwright.sync_api import expect, sync_playwright

from browser import launch_chromium
from fleetlens.config import Settings, load_settings
from fleetlens.lake.paths import Lake
from fleetlens.reports.forecast import crossing_day, forecast_capacity
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.workbench import WorkbenchShape, fleet_points, write_workbench_lake

FLEETLENS = Path(sys.executable).with_name("fleetlens")
SHOTS = Path("/tmp/report_shots")
HORIZON = 90
HISTORY_DAYS = 30
DISK_LIMIT = 85.0
#: Sampling of the simulated daily tier (and of the truth computed ahead).
SAMPLE_S = 900
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SHAPE = WorkbenchShape(
    days=HISTORY_DAYS + 5, hourly_days=1, minute_hours=2, landing_hours=1, coarse_s=SAMPLE_S
)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    # Seed 9: four services cross within the horizon (44 to 77 days), one at 118, one never.
    return Fleet(FleetSpec(servers=48, seed=9, anchor_s=int(TODAY.timestamp())))


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Settings:
    settings = load_settings(
        "embedded",
        lake={"root": str(tmp_path_factory.mktemp("lake"))},
        runtime_dir=tmp_path_factory.mktemp("run"),
    )
    write_workbench_lake(Lake(settings.lake), fleet, end=datetime.now(UTC), shape=SHAPE)
    return settings


@pytest.fixture(scope="module")
def report_dir(lake_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report, written by the CLI as the daily DAG runs it."""
    out = tmp_path_factory.mktemp("report")
    env = os.environ | {
        "FLEETLENS_LAKE__ROOT": lake_settings.lake.root,
        "FLEETLENS_RUNTIME_DIR": str(lake_settings.runtime_dir),
    }
    start = TODAY - timedelta(days=HISTORY_DAYS)
    done = subprocess.run(
        [str(FLEETLENS), "report", "capacity", "--start", f"{start:%Y-%m-%d}", "--end",
         f"{TODAY:%Y-%m-%d}", "--group-by", "service", "--horizon", f"{HORIZON}d", "--out",
         str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["html"] == str(out / "capacity.html")
    return out


def true_days_to_threshold(fleet: Fleet) -> dict[str, float | None]:
    """Per service: when the daily p95 of disk, simulated ahead from the model (exact
    quantiles of the same samples), first reaches the limit, counted from yesterday."""
    start = TODAY - timedelta(days=1)
    ahead = fleet_points(
        fleet,
        start_s=int(start.timestamp()),
        end_s=int((TODAY + timedelta(days=HORIZON + 30)).timestamp()),
        interval_s=SAMPLE_S,
        metrics=("disk_pct",),
    )
    daily = (
        ahead.group_by(pl.col("ts").dt.date().alias("day"), "service")
        .agg(pl.col("value").quantile(0.95, "higher"))
        .sort("service", "day")
    )
    truth = {}
    for (service,), rows in daily.group_by("service", maintain_order=True):
        values = rows["value"].to_numpy()
        truth[str(service)] = crossing_day(values[1:], DISK_LIMIT, start=float(values[0]))
    return truth


def test_days_to_threshold_are_within_10_percent_of_the_truth(
    report_dir: Path, fleet: Fleet
) -> None:
    truth = true_days_to_threshold(fleet)
    headroom = pl.read_csv(report_dir / "headroom.csv").filter(pl.col("metric") == "disk_pct")
    reported = dict(zip(headroom["group"], headroom["days_to_threshold"], strict=True))

    crossing = {g: d for g, d in truth.items() if d is not None and d <= HORIZON}
    # The simulated fleet must make the check mean something, with no truth on the edge.
    assert 2 <= len(crossing) < len(truth), truth
    assert all(d is None or abs(d - HORIZON) > 0.1 * HORIZON for d in truth.values()), truth
    for group, days in truth.items():
        if group in crossing:
            assert reported[group] is not None, f"{group} crosses in {days:.1f} days"
            assert abs(reported[group] - days) <= 0.1 * days, (group, reported[group], days)
        else:
            assert reported[group] is None, f"{group} does not cross within {HORIZON} days"


def test_tables_hold_history_forecast_headroom_and_backtest(report_dir: Path) -> None:
    history = pl.read_csv(report_dir / "history.csv")
    forecast = pl.read_csv(report_dir / "forecast.csv")
    headroom = pl.read_csv(report_dir / "headroom.csv")
    backtest = pl.read_csv(report_dir / "backtest.csv")
    at_risk = pl.read_csv(report_dir / "servers_at_risk.csv")

    series = 6 * 3  # services x thresholded metrics
    assert history.group_by("group", "metric").len()["len"].to_list() == [HISTORY_DAYS] * series
    assert forecast.group_by("group", "metric").len()["len"].to_list() == [HORIZON] * series
    assert (forecast["lo"] <= forecast["forecast"]).all()
    assert (forecast["forecast"] <= forecast["hi"]).all()
    # Most urgent first: crossing series by days, then the rest.
    days = headroom["days_to_threshold"].to_list()
    known = [d for d in days if d is not None]
    assert known == sorted(known) and days[: len(known)] == known
    # One chosen model per series, with its backtest error stated.
    chosen = backtest.filter(pl.col("chosen"))
    assert chosen.height == series and chosen["mae"].is_not_null().all()
    assert set(backtest["model"]) == {"AutoETS", "AutoTheta", "RWD"}
    assert 0 < at_risk.height <= 10
    crossing = at_risk.filter(pl.col("days_to_threshold").is_not_null())
    assert crossing["metric"].unique().to_list() == ["disk_pct"]


def test_the_report_renders_offline_with_its_charts(report_dir: Path, tmp_path: Path) -> None:
    html = report_dir / "capacity.html"
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("request", lambda request: requests.append(request.url))
        page.goto(html.as_uri())
        expect(page.locator("#headroom tr")).to_have_count(1 + 6 * 3)
        figures = page.locator(".figure svg")
        expect(figures).to_have_count(3)
        # The disk panel: trend, forecast, band and threshold, named in its legend.
        legend = figures.first.text_content() or ""
        for label in ("daily p95", "forecast", "80 % band", "threshold", "disk_pct"):
            assert label in legend, label
        box = figures.first.bounding_box()
        assert box is not None and box["width"] > 800 and box["height"] > 300
        page.screenshot(path=tmp_path / "capacity.png", full_page=True)
        figures.first.screenshot(path=tmp_path / "capacity_disk.png")
        browser.close()
    assert requests == [html.as_uri()], "the report fetched something besides itself"
    SHOTS.mkdir(exist_ok=True)
    for shot in tmp_path.glob("*.png"):
        shutil.copy(shot, SHOTS / shot.name)
        assert shot.stat().st_size > 20_000


def test_a_straight_line_is_forecast_as_one() -> None:
    days = pl.date_range(datetime(2026, 9, 1), datetime(2026, 10, 20), "1d", eager=True)
    rng = np.random.default_rng(3)
    history = pl.DataFrame(
        {
            "group": "g",
            "metric": "disk_pct",
            "day": days,
            "value": 40 + 0.5 * np.arange(len(days)) + rng.normal(0, 0.05, len(days)),
        }
    )
    result = forecast_capacity(history, horizon_days=60, thresholds={"disk_pct": 85.0})

    row = result.headroom.row(0, named=True)
    # Last value ~64.5; 85 is ~41 days further at 0.5 a day.
    assert row["days_to_threshold"] == pytest.approx(41, rel=0.05)
    assert row["growth_per_day"] == pytest.approx(0.5, rel=0.02)
    with pytest.raises(ValueError, match="at least 8 days"):
        forecast_capacity(history.head(5), horizon_days=10, thresholds={})


def test_crossing_day_interpolates_and_says_when_never() -> None:
    assert crossing_day(np.array([82.0, 84.0, 86.0]), 85.0, start=80.0) == pytest.approx(2.5)
    assert crossing_day(np.array([70.0]), 85.0, start=90.0) == 0.0
    assert crossing_day(np.array([70.0, 71.0]), 85.0, start=69.0) is None


def test_bad_arguments_are_refused_by_name(lake_settings: Settings) -> None:
    env = os.environ | {"FLEETLENS_LAKE__ROOT": lake_settings.lake.root}
    for args, field in (
        (["--group-by", "rack"], "--group-by"),
        (["--horizon", "36h"], "--horizon"),
    ):
        done = subprocess.run(
            [str(FLEETLENS), "report", "capacity", "--start", "2026-11-01", "--end",
             "2026-11-20", *args],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and field in done.stderr, done.stderr
