"""The ``fleetlens`` command line."""
