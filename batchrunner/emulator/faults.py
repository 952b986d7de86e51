"""Faults on demand: what can go wrong, how often, and the deterministic dice that decide.

A :class:`FaultSpec` is parsed from a short text (``"chaos"``, ``"5xx=0.1,429=0.05"``,
``"chaos,5xx=0.2"``): a comma list of presets and ``kind=rate`` items, later items
overriding earlier ones. The kinds:

==============  ==================================================================
``5xx``         a 500/502/503 in Stripe's error shape, before the server acted
``429``         a 429 ``rate_limit`` burst: the triggering request and the next
                ``429_burst`` requests of the same API key are refused
``reset_before`` the connection is aborted before the server acted (nothing created)
``reset_after``  the server acted (run created, idempotent response saved), then the
                connection is aborted before the response is written
``cut_download`` a result download sends its headers (full Content-Length) and part
                of the body, then the connection is aborted
``slow_download`` a result download is throttled to ``slow_bps`` bytes per second
``run_failure``  a query run fails with a spurious internal error
==============  ==================================================================

:class:`FaultInjector` owns one ``random.Random`` per kind, seeded from (seed, kind), and
rolls a kind's die once per eligible event. The decisions therefore depend only on the
seed and the order of events, never on the other kinds' rates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from batchrunner.errors import ConfigError

#: The spec names of the fault kinds, in the order they are documented.
FAULT_KINDS: Final = (
    "5xx",
    "429",
    "reset_before",
    "reset_after",
    "cut_download",
    "slow_download",
    "run_failure",
)

# Spec name -> dataclass field (``5xx`` and ``429`` are not identifiers).
_RATE_FIELDS: Final = {
    "5xx": "http_5xx",
    "429": "http_429",
    "reset_before": "reset_before",
    "reset_after": "reset_after",
    "cut_download": "cut_download",
    "slow_download": "slow_download",
    "run_failure": "run_failure",
}
_INT_FIELDS: Final = {"429_burst": "burst_429", "slow_bps": "slow_bps", "seed": "seed"}

DownloadFault = Literal["cut", "slow"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """How often each fault happens (probabilities per eligible event), plus its knobs.

    Example::

        FaultSpec.parse("chaos")                      # the preset
        FaultSpec.parse("chaos,5xx=0.2,seed=3")       # preset with an override
        FaultSpec(http_5xx=0.1, reset_after=0.05)     # directly
    """

    http_5xx: float = 0.0
    http_429: float = 0.0
    reset_before: float = 0.0
    reset_after: float = 0.0
    cut_download: float = 0.0
    slow_download: float = 0.0
    run_failure: float = 0.0
    #: After a triggered 429, this many further requests of the same key also get 429.
    burst_429: int = 3
    #: Throughput of a ``slow_download`` in bytes per second.
    slow_bps: int = 256 * 1024
    #: Dice seed; ``None`` uses the emulator's seed.
    seed: int | None = None

    def __post_init__(self) -> None:
        for kind, name in _RATE_FIELDS.items():
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"fault rate {kind}={rate} must be between 0 and 1")
        if self.burst_429 < 0:
            raise ConfigError("429_burst must be >= 0")
        if self.slow_bps < 1:
            raise ConfigError("slow_bps must be >= 1")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """Parse ``"preset,kind=rate,..."``; later items override earlier ones."""
        values: dict[str, Any] = {}
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            if not sep:
                if name not in PRESETS:
                    known = ", ".join(sorted(PRESETS))
                    raise ConfigError(f"unknown fault preset {name!r} (known: {known})")
                preset = PRESETS[name]
                values.update({f: getattr(preset, f) for f in _RATE_FIELDS.values()})
            elif name in _RATE_FIELDS:
                try:
                    values[_RATE_FIELDS[name]] = float(value)
                except ValueError:
                    raise ConfigError(f"fault rate {item!r} is not a number") from None
            elif name in _INT_FIELDS:
                try:
                    values[_INT_FIELDS[name]] = int(value)
                except ValueError:
                    raise ConfigError(f"fault setting {item!r} is not an integer") from None
            else:
                known = ", ".join([*FAULT_KINDS, *_INT_FIELDS])
                raise ConfigError(f"unknown fault kind {name!r} (known: {known})")
        return cls(**values)

    def rate(self, kind: str) -> float:
        """The probability of ``kind`` (one of :data:`FAULT_KINDS`)."""
        return float(getattr(self, _RATE_FIELDS[kind]))

    @property
    def active(self) -> bool:
        """True when any fault can happen (the request path skips all dice otherwise)."""
        return any(self.rate(kind) > 0 for kind in FAULT_KINDS)

    def __str__(self) -> str:
        parts = [f"{kind}={self.rate(kind):g}" for kind in FAULT_KINDS if self.rate(kind) > 0]
        defaults = {f.name: f.default for f in fields(self)}
        parts += [
            f"{name}={getattr(self, attr)}"
            for name, attr in _INT_FIELDS.items()
            if getattr(self, attr) != defaults[attr]
        ]
        return ",".join(parts) or "none"


PRESETS: Final[dict[str, FaultSpec]] = {
    "none": FaultSpec(),
    "off": FaultSpec(),
    "chaos": FaultSpec(
        http_5xx=0.10,
        http_429=0.05,
        reset_before=0.02,
        reset_after=0.02,
        cut_download=0.02,
        slow_download=0.01,
        run_failure=0.01,
    ),
}


@dataclass(frozen=True, slots=True)
class RequestFaults:
    """The faults decided for one API request, applied by the server in this order."""

    rate_limited: bool = False
    reset_before: bool = False
    server_error: int | None = None
    reset_after: bool = False

    @property
    def any(self) -> bool:
        """True when at least one fault applies."""
        return (
            self.rate_limited
            or self.reset_before
            or self.server_error is not None
            or self.reset_after
        )


NO_FAULTS: Final = RequestFaults()
_SERVER_ERRORS: Final = (500, 502, 503)


class FaultInjector:
    """Deterministic fault decisions: one seeded die per kind, rolled per eligible event."""

    __slots__ = ("_bursts", "_rngs", "counts", "spec")

    def __init__(self, spec: FaultSpec, *, seed: int) -> None:
        self.spec = spec
        base = spec.seed if spec.seed is not None else seed
        self._rngs = {kind: random.Random(f"{base}:{kind}") for kind in FAULT_KINDS}
        self._bursts: dict[str, int] = {}
        #: Faults injected so far, by kind.
        self.counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def _roll(self, kind: str) -> bool:
        rate = self.spec.rate(kind)
        return rate > 0 and self._rngs[kind].random() < rate

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1

    def for_request(self, api_key: str) -> RequestFaults:
        """Decide the request-level faults for one /v1 request made with ``api_key``.

        Every kind's die is rolled (when its rate is positive) so that each kind's
        sequence of decisions depends only on the number of requests seen.
        """
        if not self.spec.active:
            return NO_FAULTS
        burst_left = self._bursts.get(api_key, 0)
        hit_429 = self._roll("429")
        hit_before = self._roll("reset_before")
        hit_5xx = self._roll("5xx")
        status = self._rngs["5xx"].choice(_SERVER_ERRORS) if hit_5xx else None
        hit_after = self._roll("reset_after")
        if burst_left > 0:
            self._bursts[api_key] = burst_left - 1
            self._count("429")
            return RequestFaults(rate_limited=True)
        if hit_429:
            if self.spec.burst_429 > 0:
                self._bursts[api_key] = self.spec.burst_429
            self._count("429")
            return RequestFaults(rate_limited=True)
        if hit_before:
            self._count("reset_before")
            return RequestFaults(reset_before=True)
        if status is not None:
            self._count("5xx")
            return RequestFaults(server_error=status)
        if hit_after:
            self._count("reset_after")
            return RequestFaults(reset_after=True)
        return NO_FAULTS

    def for_download(self) -> DownloadFault | None:
        """Decide whether a result download is cut short or throttled."""
        if not self.spec.active:
            return None
        cut = self._roll("cut_download")
        slow = self._roll("slow_download")
        if cut:
            self._count("cut_download")
            return "cut"
        if slow:
            self._count("slow_download")
            return "slow"
        return None

    def cut_fraction(self) -> float:
        """How much of the body a cut download sends before the abort (0.1 to 0.9)."""
        return 0.1 + 0.8 * self._rngs["cut_download"].random()

    def for_run(self) -> bool:
        """Decide whether a new query run fails with a spurious internal error."""
        if self._roll("run_failure"):
            self._count("run_failure")
            return True
        return False

    def reset_counts(self) -> None:
        """Zero the injected-fault counters (the dice keep their state)."""
        self.counts = dict.fromkeys(FAULT_KINDS, 0)
