"""Serving: the FleetLens HTTP API (ingest, alerts) and what it reads."""
