"""Ingest: the HTTP collector and the raw archiver."""
