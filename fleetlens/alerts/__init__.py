"""Alerting: rules, their evaluation in the stream, the alert lifecycle and notifications."""
