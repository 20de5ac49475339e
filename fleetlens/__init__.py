"""FleetLens: a telemetry analytics workbench with a lambda architecture."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "query"]


def __getattr__(name: str) -> object:
    # ``fleetlens.query`` for notebooks, without making every CLI start import polars.
    if name == "query":
        from fleetlens.serving.query import query

        return query
    raise AttributeError(f"module 'fleetlens' has no attribute {name!r}")
