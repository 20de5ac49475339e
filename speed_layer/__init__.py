"""Speed layer: live event-time window aggregates from Kafka (see docs/architecture.md)."""
