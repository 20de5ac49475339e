"""``python -m fleetlens`` is the ``fleetlens`` command."""

from fleetlens.cli.main import app

app(prog_name="fleetlens")
