"""Kafka access: client factories, topic management, the embedded broker and the DLQ."""
