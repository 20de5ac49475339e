"""Batch layer: Spark jobs over the lake (see docs/architecture.md)."""
