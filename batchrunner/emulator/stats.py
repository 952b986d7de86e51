"""The emulator's request counters, as ``GET /_emulator/stats`` reports them."""

from __future__ import annotations

from typing import Any


class Stats:
    """Counters since start or the last reset (the run engine and fault injector keep theirs)."""

    __slots__ = (
        "bytes_served",
        "downloads",
        "http_429",
        "idempotency_conflicts",
        "idempotency_mismatches",
        "idempotent_replays",
        "rate_limited",
        "requests",
        "resets",
    )

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, int]] = {}
        self.http_429 = 0
        self.rate_limited = 0
        self.idempotent_replays = 0
        self.idempotency_conflicts = 0
        self.idempotency_mismatches = 0
        self.bytes_served = 0
        self.resets = 0
        # dropped: the client went away mid-stream (only throttled/cut downloads are
        # streamed by the emulator; aiohttp itself ends a plain file response quietly).
        self.downloads = {"started": 0, "cut": 0, "slow": 0, "dropped": 0}

    def record(self, label: str, status: str) -> None:
        by_status = self.requests.get(label)
        if by_status is None:
            by_status = self.requests[label] = {}
        by_status[status] = by_status.get(status, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": {k: dict(v) for k, v in self.requests.items()},
            "http_429": self.http_429,
            "rate_limited": self.rate_limited,
            "idempotent_replays": self.idempotent_replays,
            "idempotency_conflicts": self.idempotency_conflicts,
            "idempotency_mismatches": self.idempotency_mismatches,
            "bytes_served": self.bytes_served,
            "connection_resets": self.resets,
            "downloads": dict(self.downloads),
        }
