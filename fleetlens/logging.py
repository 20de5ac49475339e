"""Structured logging (structlog), configured once by the CLI."""

from __future__ import annotations

import logging
import sys

import structlog

from fleetlens.config import Settings

__all__ = ["configure_logging", "get_logger"]


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured:
    a redirection made later (a test's capture, an in-process CLI run) is followed, and one
    that has ended is not written to."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library's logging to stderr, as JSON or for a console."""
    level = logging.getLevelNamesMapping().get(settings.log.level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=_Stderr())  # type: ignore[arg-type]
    # kafka-python logs a cancelled metadata refresh at ERROR whenever a client closes.
    logging.getLogger("kafka.cluster").setLevel(logging.CRITICAL)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger bound to ``component=name``."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(component=name)
    return logger
