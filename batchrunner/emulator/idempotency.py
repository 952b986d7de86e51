"""Stripe's ``Idempotency-Key`` semantics for POST requests.

* The first response the endpoint produced for a key (even a genuine 500) is saved for
  24 hours and replayed for every later request with that key: same status, same body,
  plus ``Idempotent-Replayed: true``.
* The same key with another endpoint or other parameters: 400 ``idempotency_error``.
* The same key while its first request is still being processed: 409 (retry later).
* Nothing is saved for a request refused before the endpoint executed: validation
  failures (400), conflicts (409) and rate limiting (429 runs *before* idempotency).
  The server calls :meth:`IdempotencyStore.abandon` for those.
* Keys are scoped per API key and are at most 255 characters long.

The store is used from the event loop only, so it needs no lock: ``begin`` marks the key
in flight synchronously, and ``complete``/``abandon`` settle it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_KEY_LENGTH: Final = 255
TTL_SECONDS: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What must match for a replay: the endpoint, the concrete path and the parameters."""

    endpoint: str
    path: str
    params: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, endpoint: str, path: str, params: list[tuple[str, str]]) -> Fingerprint:
        """Fingerprint a request; parameter order does not matter."""
        return cls(endpoint=endpoint, path=path, params=tuple(sorted(params)))


@dataclass(frozen=True, slots=True)
class SavedResponse:
    """A response kept for replay."""

    status: int
    body: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class Proceed:
    """A new key (or an expired one): execute, then ``complete`` or ``abandon``."""


@dataclass(frozen=True, slots=True)
class Replay:
    """The key's first response, to be sent again."""

    response: SavedResponse


@dataclass(frozen=True, slots=True)
class InFlight:
    """The key's first request is still being processed: answer 409."""

    message: str


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was first used for another endpoint or other parameters: answer 400."""

    message: str


Outcome = Proceed | Replay | InFlight | Mismatch
_PROCEED: Final = Proceed()


def key_error(key: str) -> str | None:
    """Why an ``Idempotency-Key`` header value is unusable, or None if it is fine."""
    if len(key) > MAX_KEY_LENGTH:
        return (
            f"Invalid idempotency key: keys for idempotent requests can be at most "
            f"{MAX_KEY_LENGTH} characters long (this one has {len(key)})."
        )
    return None


class _Entry:
    __slots__ = ("created", "fingerprint", "response")

    def __init__(self, fingerprint: Fingerprint, created: float) -> None:
        self.fingerprint = fingerprint
        self.created = created
        self.response: SavedResponse | None = None


class IdempotencyStore:
    """Saved first responses per (API key, idempotency key), pruned after ``ttl`` seconds."""

    __slots__ = ("_clock", "_entries", "ttl")

    def __init__(
        self, *, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def _prune(self, now: float) -> None:
        entries = self._entries
        while entries:
            entry = next(iter(entries.values()))
            if entry.response is None or now - entry.created < self.ttl:
                return
            entries.popitem(last=False)

    def begin(self, scope: str, key: str, fingerprint: Fingerprint) -> Outcome:
        """Look the key up; on :class:`Proceed` the key is now in flight."""
        now = self._clock()
        self._prune(now)
        entries = self._entries
        entry = entries.get((scope, key))
        if entry is not None and entry.response is not None and now - entry.created >= self.ttl:
            del entries[(scope, key)]
            entry = None
        if entry is None:
            entries[(scope, key)] = _Entry(fingerprint, now)
            return _PROCEED
        first = entry.fingerprint
        if first.endpoint != fingerprint.endpoint or first.path != fingerprint.path:
            return Mismatch(
                "Keys for idempotent requests can only be used for the same endpoint they "
                f"were first used for ('{first.endpoint} {first.path}' vs "
                f"'{fingerprint.endpoint} {fingerprint.path}'). Try using a key other than "
                f"'{key}' if you meant to execute a different request."
            )
        if first.params != fingerprint.params:
            return Mismatch(
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request."
            )
        if entry.response is None:
            return InFlight(
                "There is currently another in-progress request using this Idempotent Key "
                "(probably means you submitted twice, and the other request is still going "
                f"through): '{key}'. Please try again later."
            )
        return Replay(entry.response)

    def complete(self, scope: str, key: str, response: SavedResponse) -> None:
        """Save the first response for an in-flight key."""
        entry = self._entries.get((scope, key))
        if entry is not None and entry.response is None:
            entry.response = response

    def abandon(self, scope: str, key: str) -> None:
        """Forget an in-flight key whose request must not be saved."""
        entry = self._entries.get((scope, key))
        if entry is not None and entry.response is None:
            del self._entries[(scope, key)]

    def __len__(self) -> int:
        return len(self._entries)
