"""FleetLens: a telemetry analytics workbench with a lambda architecture."""

from __future__ import annotations

__version__ = "0.1.0"
