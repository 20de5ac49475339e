"""Silences and maintenance windows: they suppress notifications, never evaluation.

A silence is Alertmanager's: label matchers (``=``, ``!=``, ``=~``, ``!~``), a start, an end
and a comment, created through the API by a tenant's user. A maintenance window comes from
the rules file: matchers and either fixed times or a weekly schedule. Pure: times are passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, time
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MaintenanceWindow", "Matcher", "Silence", "suppressing"]


class Matcher(BaseModel):
    """One label condition: ``name`` equals (or, with ``is_regex``, fully matches) ``value``;
    ``is_equal=False`` negates it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    value: str
    is_regex: bool = False
    is_equal: bool = True

    @model_validator(mode="after")
    def _compiles(self) -> Matcher:
        if self.is_regex:
            try:
                re.compile(self.value)
            except re.error as error:
                raise ValueError(f"not a regular expression: {error}") from None
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(self.value)

    def matches(self, labels: Mapping[str, str | None]) -> bool:
        """True if ``labels`` satisfy this matcher (a missing label is the empty string)."""
        value = labels.get(self.name) or ""
        hit = bool(self._pattern.fullmatch(value)) if self.is_regex else value == self.value
        return hit == self.is_equal


def _all_match(matchers: Iterable[Matcher], labels: Mapping[str, str | None]) -> bool:
    return all(m.matches(labels) for m in matchers)


class Silence(BaseModel):
    """Notifications of matching alerts are suppressed between ``starts_at`` and ``ends_at``
    (epoch ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    tenant: str
    matchers: tuple[Matcher, ...] = Field(min_length=1)
    starts_at: int
    ends_at: int
    comment: str = Field(min_length=1)
    created_by: str

    @model_validator(mode="after")
    def _ordered(self) -> Silence:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    def suppresses(self, labels: Mapping[str, str | None], at_ms: int) -> bool:
        """True if this silence is in force at ``at_ms`` for an alert with ``labels`` (of the
        silence's own tenant only)."""
        return (
            self.starts_at <= at_ms < self.ends_at
            and labels.get("tenant") == self.tenant
            and _all_match(self.matchers, labels)
        )


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MaintenanceWindow(BaseModel):
    """A planned window from the rules file: fixed (``starts_at``/``ends_at``, ISO times) or
    weekly (``days`` and ``from``/``to``, UTC; ``to`` before ``from`` runs past midnight)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    matchers: tuple[Matcher, ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    days: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] = ()
    from_: time | None = Field(default=None, alias="from")
    to: time | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> MaintenanceWindow:
        fixed = self.starts_at is not None or self.ends_at is not None
        weekly = bool(self.days) or self.from_ is not None or self.to is not None
        if fixed == weekly:
            raise ValueError("give either starts_at and ends_at, or days, from and to")
        if fixed and (self.starts_at is None or self.ends_at is None):
            raise ValueError("a fixed window needs starts_at and ends_at")
        if weekly and (not self.days or self.from_ is None or self.to is None):
            raise ValueError("a weekly window needs days, from and to")
        return self

    def covers(self, labels: Mapping[str, str | None], at_ms: int) -> bool:
        """True if the window is in force at ``at_ms`` for an alert with ``labels``."""
        if not _all_match(self.matchers, labels):
            return False
        moment = datetime.fromtimestamp(at_ms / 1000, UTC)
        if self.starts_at is not None and self.ends_at is not None:
            start = self.starts_at.replace(tzinfo=self.starts_at.tzinfo or UTC)
            end = self.ends_at.replace(tzinfo=self.ends_at.tzinfo or UTC)
            return start <= moment < end
        assert self.from_ is not None and self.to is not None
        day, now = _DAYS[moment.weekday()], moment.time()
        if self.from_ <= self.to:
            return day in self.days and self.from_ <= now < self.to
        # Past midnight: the evening of a listed day, or the morning after it.
        yesterday = _DAYS[(moment.weekday() - 1) % 7]
        return (day in self.days and now >= self.from_) or (
            yesterday in self.days and now < self.to
        )


def suppressing(
    labels: Mapping[str, str | None],
    at_ms: int,
    *,
    silences: Iterable[Silence],
    maintenance: Iterable[MaintenanceWindow],
) -> tuple[str, ...]:
    """What suppresses a notification of an alert with ``labels`` at ``at_ms``: the ids of
    the silences and ``maintenance:<name>`` of the windows in force (empty: notify)."""
    found = [s.id for s in silences if s.suppresses(labels, at_ms)]
    found += [f"maintenance:{w.name}" for w in maintenance if w.covers(labels, at_ms)]
    return tuple(found)
