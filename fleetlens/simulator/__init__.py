"""Simulated fleets: live telemetry through the collector, and history into the landing zone."""
