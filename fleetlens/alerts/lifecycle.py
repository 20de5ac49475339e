"""The lifecycle of one alert: inactive → pending → firing → resolved, with ``for`` and
``keep_firing_for``, and when it is due a notification (first firing, repeat, escalation,
resolved).

Pure: :meth:`Alert.evaluate` is given each evaluation's outcome and time, :meth:`Alert.due`
the time of a periodic check; both return what happened, for the engine to record and route.
Times are epoch ms.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["Alert", "Change", "State"]

State = Literal["inactive", "pending", "firing"]
#: What a call changed: a state transition, or a notification due while firing; ``reset``:
#: the episode ended because its state was dropped (see ``AlertEngine.end_dropped``).
Change = Literal["pending", "firing", "resolved", "cancelled", "repeat", "escalate", "reset"]


class Alert:
    """One rule's alert for one server (or label set).

    ``started_at`` is when the condition became true for this episode (pending from then);
    ``firing_at`` when it fired. An episode ends with ``resolved`` (or ``cancelled`` if it never
    fired); the next time the condition holds starts a new episode.
    """

    __slots__ = (
        "acked_at",
        "acked_by",
        "escalated_at",
        "escalation",
        "false_since",
        "firing_at",
        "last_notified_at",
        "notified",
        "notified_channels",
        "repeats",
        "started_at",
        "state",
        "value",
    )

    def __init__(self) -> None:
        self.state: State = "inactive"
        self.started_at: int | None = None
        self.firing_at: int | None = None
        self.false_since: int | None = None
        self.value: float | None = None
        #: Whether the firing notification went out (it waits while suppressed).
        self.notified = False
        self.notified_channels: tuple[str, ...] = ()
        self.last_notified_at: int | None = None
        #: Repeats sent in this episode (numbers them: a replay produces the same ones).
        self.repeats = 0
        #: How many escalation steps were taken in this episode, and when the last began
        #: (the first notification counts as step 0).
        self.escalation = 0
        self.escalated_at: int | None = None
        self.acked_by: str | None = None
        self.acked_at: int | None = None

    def evaluate(
        self, active: bool, value: float | None, at: int, *, for_ms: int, keep_firing_for_ms: int
    ) -> Change | None:
        """Fold one evaluation of the condition at ``at``; returns the transition, if any."""
        if value is not None:
            self.value = value
        if active:
            self.false_since = None
            if self.state == "inactive":
                self.started_at, self.state = at, "pending"
                if for_ms <= 0:
                    return self._fire(at)
                return "pending"
            pending_for = at - (self.started_at if self.started_at is not None else at)
            if self.state == "pending" and pending_for >= for_ms:
                return self._fire(at)
            return None
        if self.state == "pending":
            self._end()
            return "cancelled"
        if self.state == "firing":
            if self.false_since is None:
                self.false_since = at
            if at - self.false_since >= keep_firing_for_ms:
                return "resolved"
        return None

    def _fire(self, at: int) -> Change:
        self.state, self.firing_at = "firing", at
        self.notified, self.escalation, self.escalated_at, self.repeats = False, 0, None, 0
        self.acked_by = self.acked_at = None
        return "firing"

    def resolve(self) -> None:
        """End the episode (after its ``resolved`` was recorded and notified)."""
        self._end()

    def _end(self) -> None:
        self.state = "inactive"
        self.started_at = self.firing_at = self.false_since = None
        self.notified, self.notified_channels, self.last_notified_at = False, (), None
        self.escalation, self.escalated_at, self.repeats = 0, None, 0
        self.acked_by = self.acked_at = None

    def due(
        self,
        now: int,
        *,
        repeat_interval_ms: int,
        escalate_after_ms: int | None,
    ) -> Change | None:
        """What a firing alert is due at ``now``: a repeat of its notification, or (not
        acknowledged, ``escalate_after_ms`` after the last step) an escalation."""
        if self.state != "firing" or not self.notified or self.last_notified_at is None:
            return None
        if (
            escalate_after_ms is not None
            and self.acked_at is None
            and self.escalated_at is not None
            and now - self.escalated_at >= escalate_after_ms
        ):
            return "escalate"
        if repeat_interval_ms > 0 and now - self.last_notified_at >= repeat_interval_ms:
            return "repeat"
        return None

    def mark_notified(self, channels: tuple[str, ...], at: int) -> None:
        """Record that a notification went to ``channels`` at ``at``."""
        if not self.notified:
            self.escalated_at = at
        self.notified = True
        self.notified_channels = tuple(dict.fromkeys(self.notified_channels + channels))
        self.last_notified_at = at

    def mark_escalated(self, at: int) -> None:
        """Record an escalation step taken at ``at``."""
        self.escalation += 1
        self.escalated_at = at

    def acknowledge(self, by: str, at: int) -> None:
        """Stop escalation (repeats go on) until the episode ends."""
        self.acked_by, self.acked_at = by, at

    def to_state(self) -> list[Any]:
        """Plain data for checkpoints."""
        return [getattr(self, name) for name in self.__slots__]

    @classmethod
    def from_state(cls, state: list[Any]) -> Alert:
        """Inverse of :meth:`to_state`."""
        alert = cls()
        for name, value in zip(cls.__slots__, state, strict=True):
            setattr(alert, name, tuple(value) if name == "notified_channels" else value)
        return alert
