"""The generated Trino SQL: every statement parses as Trino SQL, the registrations point at the
lake's tables, and the serving views, run in DuckDB (transpiled by sqlglot) over a simulated
lake, answer what the Python query engine answers, wherever the watermarks are.

Trino is not available here; ``fleetlens trino apply`` is only checked for its failure on an
unreachable server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlglot
from polars.testing import assert_frame_equal
from sqlglot import exp
from typer.testing import CliRunner

from duck_lake import END, T0, WATERMARKS, connect, simulated_lake
from fleetlens.cli.main import app
from fleetlens.config import Settings, load_settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ROLLUP_1H, ROLLUP_1M
from fleetlens.lake.schemas import WATERMARKS as WATERMARKS_TABLE
from fleetlens.serving.query import QueryEngine
from fleetlens.serving.trino import (
    LAKE_TABLES,
    VIEW_COLUMNS,
    register_statements,
    serving_tiers,
    serving_views,
    statements,
)

#: Watermark layouts: the usual one; only the finest tier verified; the finer tier behind the
#: coarser one; nothing verified (the speed layer serves everything).
LAYOUTS: dict[str, Mapping[str, datetime]] = {
    "staggered": WATERMARKS,
    "only_1m": {ROLLUP_1M: T0 + timedelta(hours=27)},
    "1m_behind_1h": {ROLLUP_1H: T0 + timedelta(hours=26), ROLLUP_1M: T0 + timedelta(hours=25)},
    "none": {},
}
AGGS = ("count", "sum", "min", "max")


@pytest.fixture(scope="module", params=list(LAYOUTS))
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return simulated_lake(tmp_path_factory.mktemp(f"lake-{request.param}"), LAYOUTS[request.param])


def _parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="trino", error_level=sqlglot.ErrorLevel.RAISE)


def test_every_statement_parses_as_trino() -> None:
    settings = load_settings("embedded")
    sqls = statements(settings)
    kinds = [type(_parse(sql)).__name__ for sql in sqls]
    tables, views = len(LAKE_TABLES), len(serving_tiers(settings.batch.retention))
    assert kinds == ["Create"] + ["Command"] * tables + ["Create"] * views
    for sql in sqls:
        assert not sql.rstrip().endswith(";")
    # The views expose the same columns, in order, whichever tier they serve.
    for sql in sqls[-views:]:
        view = _parse(sql)
        assert isinstance(view, exp.Create) and view.kind == "VIEW"
        query = view.expression
        assert isinstance(query, exp.Query)
        assert query.named_selects == list(VIEW_COLUMNS)


def test_registrations_call_the_procedure_with_each_tables_location(tmp_path: Path) -> None:
    # A local lake: an s3:// root would make Lake resolve the bucket's region over the network.
    lake = Lake(load_settings("embedded", lake={"root": str(tmp_path)}).lake)
    calls = register_statements(lake, catalog="lakehouse", schema="fl")
    assert len(calls) == len(LAKE_TABLES)
    for name, call in zip(LAKE_TABLES, calls, strict=True):
        assert call.startswith("CALL ")
        # sqlglot keeps CALL as a command: parse the procedure call itself.
        procedure = _parse(call.removeprefix("CALL "))
        assert procedure.sql(dialect="trino").startswith("lakehouse.system.register_table(")
        args = {kwarg.this.name: kwarg.expression.name for kwarg in procedure.find_all(exp.Kwarg)}
        # Trino opens locations by their scheme: local paths as file:// URIs.
        assert args == {
            "schema_name": "fl",
            "table_name": name,
            "table_location": f"file://{lake.table_uri(name)}",
        }


def test_views_read_the_watermarks_and_name_their_tables() -> None:
    views = serving_views(load_settings("embedded").batch.retention, catalog="c", schema="s")
    assert list(views) == ["fleet_1m", "fleet_1h", "fleet_1d"]
    for view in views.values():
        tables = {(t.catalog, t.db, t.name) for t in view.expression.find_all(exp.Table)}
        qualified = {t for t in tables if t[0]}
        assert ("c", "s", WATERMARKS_TABLE) in qualified
        assert all(t[:2] == ("c", "s") for t in qualified)


def _expected(settings: Settings, step: str, group_by: Sequence[str], metric: str) -> pl.DataFrame:
    result = QueryEngine(settings).query(
        metric, T0, END, step=step, group_by=group_by, aggs=AGGS, now=END
    )
    return pl.DataFrame(result)


def _from_view(settings: Settings, view: str, group_by: Sequence[str], metric: str) -> pl.DataFrame:
    keys = ", ".join(["window_start", *group_by])
    sql = f"""
        SELECT {keys}, sum(count)::BIGINT AS count, sum(sum) AS sum, min(min) AS min,
               max(max) AS max
        FROM {view}
        WHERE metric = $metric AND window_start >= $start AND window_start < $end
        GROUP BY ALL ORDER BY {keys}
    """
    params = {"metric": metric, "start": T0, "end": END}
    frame = connect(settings).sql(sql, params=params).pl()
    return frame.with_columns(pl.col("window_start").dt.cast_time_unit("us"))


@pytest.mark.parametrize("group_by", [("server_id",), ("service",), ()], ids=str)
@pytest.mark.parametrize("step", ["1m", "1h", "1d"])
def test_views_answer_like_the_query_engine(
    lake: Settings, step: str, group_by: tuple[str, ...]
) -> None:
    view = f"fleet_{step}"
    expected = _expected(lake, step, group_by, "cpu_pct")
    got = _from_view(lake, view, group_by, "cpu_pct")
    assert expected.height > 0
    assert_frame_equal(got, expected, check_dtypes=False, abs_tol=1e-6, rel_tol=1e-9)


def test_views_take_batch_rows_before_the_watermark_and_speed_rows_after(
    tmp_path: Path,
) -> None:
    settings = simulated_lake(tmp_path, WATERMARKS)
    con = connect(settings)
    hourly = con.execute(
        "SELECT window_start, sum(count) FROM fleet_1h WHERE metric = 'cpu_pct' "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    counts = {start: int(total) for start, total in hourly}
    # 4 servers x 60 samples an hour in the batch tables; the speed layer missed a fifth.
    assert counts[WATERMARKS[ROLLUP_1M] - timedelta(hours=1)] == 240
    assert counts[WATERMARKS[ROLLUP_1M]] == 192
    # Quantiles only where a row is one source window: rollup_1h's rows, not merged minutes.
    p95 = dict(
        con.execute(
            "SELECT window_start, count(p95) FROM fleet_1h WHERE metric = 'cpu_pct' GROUP BY 1"
        ).fetchall()
    )
    assert p95[WATERMARKS[ROLLUP_1H] - timedelta(hours=1)] == 4
    assert p95[WATERMARKS[ROLLUP_1H]] == 0


def test_trino_sql_prints_terminated_statements(tmp_path: Path) -> None:
    env = {"FLEETLENS_PROFILE": "embedded", "FLEETLENS_LAKE__ROOT": str(tmp_path)}
    result = CliRunner().invoke(app, ["trino", "sql"], env=env)
    assert result.exit_code == 0, result.output
    parsed = sqlglot.parse(result.stdout, read="trino")
    assert len(parsed) == len(statements(load_settings("embedded", lake={"root": str(tmp_path)})))
    assert result.stdout.rstrip().endswith(";")


def test_trino_apply_fails_clearly_when_the_server_is_unreachable(tmp_path: Path) -> None:
    env = {"FLEETLENS_PROFILE": "embedded", "FLEETLENS_LAKE__ROOT": str(tmp_path)}
    # Port 9 (discard) on localhost: nothing listens there.
    result = CliRunner().invoke(app, ["trino", "apply", "--url", "http://127.0.0.1:9"], env=env)
    assert result.exit_code == 1
    assert "cannot reach Trino at http://127.0.0.1:9" in result.output
