"""Event contract v1: one agent's sample of one server at one instant.

The wire shape is declared as a msgspec ``Struct`` (types, required fields, sizes); the rules
that depend on configuration (known metrics and their ranges, the tag allow-list, clock skew)
are checked after decoding. Every violation names the field at fault.

On Kafka (``fleet.metrics.v1``, keyed by ``server_id``) events are stored in canonical form:
the same v1 shape with ``ts`` as epoch milliseconds and the ``tenant`` tag always present.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from fleetlens.config import ContractSettings

__all__ = [
    "SCHEMA_VERSION",
    "ContractViolation",
    "Event",
    "Validator",
    "decode_canonical",
    "encode_event",
]

SCHEMA_VERSION = 1

# The characters of ids are checked in ``Validator._check``: a msgspec ``pattern`` costs ~1 µs
# per field (a call into ``re`` from C), a third of a payload's decoding.
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_ServerId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_ID_CHARACTERS = "A-Za-z0-9_.:-"
_NOT_ID_CHARACTER = re.compile(r"[^A-Za-z0-9_.:\-]")


def _plain_ids(event_id: str, server_id: str) -> bool:
    """Both ids use only :data:`_ID_CHARACTERS` (one search over both)."""
    return _NOT_ID_CHARACTER.search(event_id + server_id) is None


class _WirePayload(msgspec.Struct, forbid_unknown_fields=True):
    schema_version: Literal[1]
    event_id: _Id
    server_id: _ServerId
    ts: int | datetime
    metrics: dict[str, float]
    tags: dict[str, str] = {}


def _strict_payload(settings: ContractSettings) -> tuple[type, type] | None:
    """A msgspec type that accepts only canonical payloads (epoch-ms ``ts``) that pass every
    configured rule except those :meth:`Validator.canonical` checks after decoding (clock
    skew, id characters, counts), and the type of its ``metrics``; ``None`` where no payload
    could pass (no ``tenant`` tag).

    Known metrics and tags become optional fields with their bounds, so decoding checks them
    in C: a fast path for the valid payloads, which are nearly all.
    """
    if "tenant" not in settings.tag_keys:
        return None
    unset = msgspec.UNSET
    metric_fields = []
    for i, spec in enumerate(settings.metrics.values()):
        low = -sys.float_info.max if spec.min is None else spec.min
        high = sys.float_info.max if spec.max is None else spec.max
        bounded = Annotated[float, msgspec.Meta(ge=low, le=high)]
        metric_fields.append((f"m{i}", bounded | msgspec.UnsetType, unset))
    metrics = msgspec.defstruct(
        "StrictMetrics",
        metric_fields,
        forbid_unknown_fields=True,
        rename={f"m{i}": name for i, name in enumerate(settings.metrics)},
    )
    text = Annotated[str, msgspec.Meta(min_length=1, max_length=settings.max_tag_value_length)]
    optional_tags = [k for k in settings.tag_keys if k != "tenant"]
    tags = msgspec.defstruct(
        "StrictTags",
        [
            ("t", text),
            *((f"t{i}", text | msgspec.UnsetType, unset) for i in range(len(optional_tags))),
        ],
        forbid_unknown_fields=True,
        rename={"t": "tenant", **{f"t{i}": k for i, k in enumerate(optional_tags)}},
    )
    payload = msgspec.defstruct(
        "StrictPayload",
        [
            ("event_id", _Id),
            ("server_id", _ServerId),
            ("ts", int),
            ("metrics", metrics),
            ("tags", tags),
            ("schema_version", Literal[1]),
        ],
        forbid_unknown_fields=True,
    )
    return payload, metrics


class Event(msgspec.Struct, frozen=True):
    """A validated event in canonical form (``ts`` in epoch milliseconds, UTC)."""

    event_id: str
    server_id: str
    ts: int
    metrics: dict[str, float]
    tags: dict[str, str]
    schema_version: int = SCHEMA_VERSION


class ContractViolation(ValueError):  # noqa: N818 - reads as what it is: a violation of the contract
    """A payload breaks the contract; ``field`` is a dotted path such as ``metrics.cpu_pct``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


_encoder = msgspec.json.Encoder()


_canonical_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Serialise an event in its canonical JSON form for Kafka."""
    return _encoder.encode(event)


def decode_canonical(data: bytes) -> Event:
    """Read bytes :meth:`Validator.canonical` returned (types only: the rules were checked).

    Raises:
        msgspec.ValidationError: the bytes are not a canonical event.
    """
    return _canonical_decoder.decode(data)


#: Value types of the free-form maps, to find which key a ``[...]`` error is about.
_MAP_VALUE_TYPES: dict[str, type] = {"metrics": float, "tags": str}
_FIELD_ERROR = re.compile(r"Object (?:missing required|contains unknown) field `(.*)`", re.DOTALL)
_AT_PATH = re.compile(r"(.*) - at `(?:key` in `)?\$([^`]*)`", re.DOTALL)


def _violation(error: msgspec.ValidationError, source: Any) -> ContractViolation:
    """The violation for a msgspec error, named by dotted path (``metrics.cpu_pct``).

    For a bad map value msgspec says "... - at `$.metrics[...]`" without the key, which is
    then looked up in ``source`` (the raw bytes or the object being converted); a bad key
    ("... - at `key` in `$.tags`") is named by its map.
    """
    reason, path = str(error), ""
    located = _AT_PATH.fullmatch(reason)
    if located:  # "key` in `$.tags" (a bad key) names the map
        reason, path = located[1], located[2].lstrip(".")
    if path.endswith("[...]"):
        parent = path.removesuffix("[...]")
        key = _failing_key(source, parent)
        path = parent if key is None else f"{parent}.{key}"
    named = _FIELD_ERROR.fullmatch(reason)
    if named:
        path = f"{path}.{named[1]}" if path else named[1]
    return ContractViolation(path, reason)


def _failing_key(source: Any, parent: str) -> str | None:
    """The first key of the map at ``parent`` whose value has the wrong type (best effort)."""
    value_type = _MAP_VALUE_TYPES.get(parent)
    if value_type is None:
        return None
    try:
        if isinstance(source, dict):
            items = source.get(parent)
            if not isinstance(items, dict):
                return None
            for key, value in items.items():
                try:
                    msgspec.convert(value, value_type)
                except msgspec.ValidationError:
                    return str(key)
        else:
            top = msgspec.json.decode(source, type=dict[str, msgspec.Raw])
            raw_items = msgspec.json.decode(top[parent], type=dict[str, msgspec.Raw])
            for key, raw in raw_items.items():
                try:
                    msgspec.json.decode(raw, type=value_type)
                except msgspec.ValidationError:
                    return key
    except Exception:  # only a diagnostic: fall back to the path of the map
        return None
    return None


class Validator:
    """Checks payloads against contract v1 and the configured rules.

    Args:
        settings: The ``contract`` section of the settings.
    """

    def __init__(self, settings: ContractSettings) -> None:
        self._settings = settings
        self._metric_ranges = {
            name: (spec.min, spec.max) for name, spec in settings.metrics.items()
        }
        self._tag_keys = frozenset(settings.tag_keys)
        self._decoder = msgspec.json.Decoder(_WirePayload)
        # For the fast path of ``_check``: a finite value is in range iff low <= value <= high
        # (NaN and infinities fail both comparisons or the finite bound, and then the detailed
        # checks name the problem).
        self._fast_ranges = {
            name: (
                -sys.float_info.max if low is None else low,
                sys.float_info.max if high is None else high,
            )
            for name, (low, high) in self._metric_ranges.items()
        }
        self._max_future_ms = settings.max_future_skew_s * 1000
        self._max_age_ms = settings.max_age_s * 1000
        strict = _strict_payload(settings)
        self._strict: msgspec.json.Decoder[Any] | None = None
        self._no_metrics: Any = None
        if strict is not None:
            payload, metrics = strict
            self._strict = msgspec.json.Decoder(payload)
            self._no_metrics = metrics()
        #: Counts the strict type cannot bound: checked only if the catalogue exceeds them.
        self._count_metrics = settings.max_metrics < len(settings.metrics)
        self._count_tags = settings.max_tags < len(settings.tag_keys)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The known metric names, in catalogue order."""
        return tuple(self._metric_ranges)

    def decode(self, data: bytes, *, now_ms: int) -> Event:
        """Validate raw JSON bytes (as read from Kafka or an HTTP body with one payload)."""
        return self._check(self._wire(data), now_ms=now_ms, tenant=None)

    def canonical(self, data: bytes, *, now_ms: int) -> bytes:
        """Validate raw JSON bytes like :meth:`decode`; return them in canonical form: as they
        are when they already are (epoch-millisecond ``ts``, as the collector writes them),
        else re-encoded. :func:`decode_canonical` reads the result without checking again.

        Raises:
            ContractViolation: as :meth:`decode`.
        """
        if self._strict is not None and len(data) <= self._settings.max_payload_bytes:
            try:
                strict = self._strict.decode(data)
            except msgspec.MsgspecError:
                strict = None  # the full check below names the violation
            if strict is not None and self._passes(strict, now_ms):
                return data
        wire = self._wire(data)
        event = self._check(wire, now_ms=now_ms, tenant=None)
        return data if isinstance(wire.ts, int) else encode_event(event)

    def _passes(self, strict: Any, now_ms: int) -> bool:
        """The rules a decoded strict payload may still break."""
        if not self._within_clock_skew(strict.ts, now_ms):
            return False
        if not _plain_ids(strict.event_id, strict.server_id):
            return False
        if strict.metrics == self._no_metrics:
            return False
        if self._count_metrics:
            present = sum(v is not msgspec.UNSET for v in msgspec.structs.astuple(strict.metrics))
            if present > self._settings.max_metrics:
                return False
        if self._count_tags:
            tags = msgspec.structs.astuple(strict.tags)
            return sum(value is not msgspec.UNSET for value in tags) <= self._settings.max_tags
        return True

    def _wire(self, data: bytes) -> _WirePayload:
        if len(data) > self._settings.max_payload_bytes:
            raise ContractViolation(
                "",
                f"payload is {len(data)} bytes, over the limit of "
                f"{self._settings.max_payload_bytes}",
            )
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as error:
            raise _violation(error, data) from None
        except msgspec.DecodeError as error:
            raise ContractViolation("", f"not valid JSON: {error}") from None

    def convert(self, obj: Any, *, now_ms: int, tenant: str | None = None) -> Event:
        """Validate an already-decoded JSON object (one element of an HTTP batch).

        Args:
            obj: The decoded JSON value.
            now_ms: The current time, for the clock-skew checks.
            tenant: When given, replaces any ``tenant`` tag: the tenant comes from the caller's
                credentials, never from the body.
        """
        if not isinstance(obj, dict):
            raise ContractViolation("", f"expected a JSON object, got {type(obj).__name__}")
        try:
            wire = msgspec.convert(obj, _WirePayload)
        except msgspec.ValidationError as error:
            raise _violation(error, obj) from None
        event = self._check(wire, now_ms=now_ms, tenant=tenant)
        # The canonical form goes to Kafka, where ``decode`` enforces the same bound.
        size = len(encode_event(event))
        if size > self._settings.max_payload_bytes:
            raise ContractViolation(
                "", f"payload is {size} bytes, over the limit of {self._settings.max_payload_bytes}"
            )
        return event

    def _check(self, wire: _WirePayload, *, now_ms: int, tenant: str | None) -> Event:
        """The configured rules. Valid payloads take the fast path; on the first doubt the
        detailed checks run, which name the first violation."""
        if not _plain_ids(wire.event_id, wire.server_id):
            for name in ("event_id", "server_id"):
                if _NOT_ID_CHARACTER.search(getattr(wire, name)):
                    raise ContractViolation(name, f"only {_ID_CHARACTERS} are allowed")
        ts_ms = _to_epoch_ms(wire.ts)
        if not self._within_clock_skew(ts_ms, now_ms):
            self._check_ts(ts_ms, now_ms)
        metrics = wire.metrics
        if not metrics or len(metrics) > self._settings.max_metrics:
            self._check_metrics(metrics)
        ranges = self._fast_ranges
        for name, value in metrics.items():
            bounds = ranges.get(name)
            if bounds is None or not bounds[0] <= value <= bounds[1]:
                self._check_metrics(metrics)
        if tenant is None:
            tags = wire.tags  # the wire payload is not used after this
        else:
            tags = dict(wire.tags)
            tags["tenant"] = tenant
        if len(tags) > self._settings.max_tags or "tenant" not in tags:
            self._check_tags(tags)
        tag_keys, longest = self._tag_keys, self._settings.max_tag_value_length
        for key, text in tags.items():
            if key not in tag_keys or not text or len(text) > longest:
                self._check_tags(tags)
        return Event(
            event_id=wire.event_id,
            server_id=wire.server_id,
            ts=ts_ms,
            metrics=metrics,
            tags=tags,
        )

    def _within_clock_skew(self, ts_ms: int, now_ms: int) -> bool:
        return now_ms - self._max_age_ms <= ts_ms <= now_ms + self._max_future_ms

    def _check_ts(self, ts_ms: int, now_ms: int) -> None:
        s = self._settings
        if ts_ms > now_ms + s.max_future_skew_s * 1000:
            raise ContractViolation("ts", f"{ts_ms} is more than {s.max_future_skew_s:g} s ahead")
        if ts_ms < now_ms - s.max_age_s * 1000:
            raise ContractViolation("ts", f"{ts_ms} is older than {s.max_age_s:g} s")

    def _check_metrics(self, metrics: dict[str, float]) -> None:
        s = self._settings
        if not metrics:
            raise ContractViolation("metrics", "at least one metric is required")
        if len(metrics) > s.max_metrics:
            raise ContractViolation("metrics", f"more than {s.max_metrics} metrics")
        for name, value in metrics.items():
            bounds = self._metric_ranges.get(name)
            if bounds is None:
                raise ContractViolation(f"metrics.{name}", "unknown metric")
            if not math.isfinite(value):
                raise ContractViolation(f"metrics.{name}", f"{value} is not a finite number")
            low, high = bounds
            if (low is not None and value < low) or (high is not None and value > high):
                upper = "" if high is None else high
                raise ContractViolation(f"metrics.{name}", f"{value} outside [{low}, {upper}]")

    def _check_tags(self, tags: dict[str, str]) -> None:
        s = self._settings
        if len(tags) > s.max_tags:
            raise ContractViolation("tags", f"more than {s.max_tags} tags")
        for key, text in tags.items():
            if key not in self._tag_keys:
                raise ContractViolation(f"tags.{key}", "tag key not in the allow-list")
            if not text or len(text) > s.max_tag_value_length:
                raise ContractViolation(
                    f"tags.{key}", f"value must be 1 to {s.max_tag_value_length} characters"
                )
        if "tenant" not in tags:
            raise ContractViolation("tags.tenant", "required")


def _to_epoch_ms(ts: int | datetime) -> int:
    if isinstance(ts, int):
        return ts
    if ts.tzinfo is None:
        raise ContractViolation("ts", "RFC 3339 timestamps need an offset (Z or ±hh:mm)")
    # Exact integer arithmetic: float seconds can be a millisecond off far from 1970.
    return (ts - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
