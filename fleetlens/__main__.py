"""``python -m fleetlens`` is the ``fleetlens`` command."""

from fleetlens.cli.main import app

# Guarded: child processes started with multiprocessing's "spawn" import this module too.
if __name__ == "__main__":
    app(prog_name="fleetlens")
