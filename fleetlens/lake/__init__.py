"""The lake: where tables and landing files live, and how they are written."""

from fleetlens.lake.paths import Lake

__all__ = ["Lake"]
