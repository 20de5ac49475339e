"""Delivery of one notification to one channel: webhook, email, log or any Apprise URL.

Each ``deliver`` either returns (the receiver accepted it) or raises; retries and dedup are
the notifier's (:mod:`fleetlens.alerts.notifier`).
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Protocol

import apprise
import httpx
import msgspec

from fleetlens.alerts.engine import AlertEvent
from fleetlens.alerts.rules import Channel
from fleetlens.config import SmtpSettings
from fleetlens.logging import get_logger

__all__ = ["Delivery", "DeliveryError", "make_delivery"]

log = get_logger("alerts.channels")


class DeliveryError(RuntimeError):
    """The receiver did not accept a notification."""


class Delivery(Protocol):
    """Sends notifications to one channel."""

    def deliver(self, event: AlertEvent) -> None:
        """Send ``event``; raises if the receiver did not accept it."""
        ...


def _title(event: AlertEvent) -> str:
    state = {"firing": "FIRING", "resolved": "RESOLVED", "repeat": "FIRING (repeat)"}.get(
        event.change, event.change.upper()
    )
    return f"[{state}] {event.rule} ({event.severity}): {event.summary}"


class _Webhook:
    """An HTTP POST of the event as JSON, with its idempotency key as a header."""

    def __init__(self, channel: Channel) -> None:
        assert channel.url is not None
        self._url = channel.url
        self._client = httpx.Client(timeout=channel.timeout_s)

    def deliver(self, event: AlertEvent) -> None:
        response = self._client.post(
            self._url,
            content=msgspec.json.encode(event),
            headers={"Content-Type": "application/json", "Idempotency-Key": event.idempotency_key},
        )
        if response.status_code >= 300:
            raise DeliveryError(f"{self._url} answered {response.status_code}")


class _Email:
    """A plain-text mail through the configured SMTP server."""

    def __init__(self, channel: Channel, smtp: SmtpSettings) -> None:
        self._to = channel.to
        self._smtp = smtp

    def deliver(self, event: AlertEvent) -> None:
        smtp = self._smtp
        message = EmailMessage()
        message["From"], message["To"] = smtp.sender, ", ".join(self._to)
        message["Subject"] = _title(event)
        message["Message-ID"] = f"<{event.idempotency_key}@fleetlens>"
        labels = "\n".join(f"  {k}: {v}" for k, v in event.labels.items() if v is not None)
        message.set_content(
            f"{event.summary}\n\n{event.description}\n\nrule: {event.rule}\n"
            f"state: {event.state}\nvalue: {event.value}\nlabels:\n{labels}\n"
        )
        context = ssl.create_default_context()
        client = (
            smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout_s, context=context)
            if smtp.security == "ssl"
            else smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout_s)
        )
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.username and smtp.password is not None:
                client.login(smtp.username, smtp.password.get_secret_value())
            client.send_message(message)


class _Log:
    """A structured log line (always accepted)."""

    def deliver(self, event: AlertEvent) -> None:
        log.warning(
            "alert.notification",
            change=event.change,
            rule=event.rule,
            severity=event.severity,
            summary=event.summary,
            labels=event.labels,
            key=event.idempotency_key,
        )


class _Apprise:
    """Slack, PagerDuty, Teams, Telegram, SMS gateways...: whatever the Apprise URL names."""

    def __init__(self, channel: Channel) -> None:
        assert channel.url is not None
        self._apprise = apprise.Apprise()
        if not self._apprise.add(channel.url):
            raise ValueError(f"Apprise does not understand the URL of this channel: {channel.url}")

    def deliver(self, event: AlertEvent) -> None:
        if not self._apprise.notify(title=_title(event), body=event.description or event.summary):
            raise DeliveryError("Apprise reported that the notification was not sent")


def make_delivery(channel: Channel, *, smtp: SmtpSettings) -> Delivery:
    """The delivery of a channel of the rules file."""
    if channel.type == "webhook":
        return _Webhook(channel)
    if channel.type == "email":
        return _Email(channel, smtp)
    if channel.type == "apprise":
        return _Apprise(channel)
    return _Log()
