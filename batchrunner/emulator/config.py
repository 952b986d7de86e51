"""The emulator's configuration: everything about one instance, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from batchrunner.emulator.auth import default_keys
from batchrunner.emulator.faults import FaultSpec
from batchrunner.emulator.ratelimit import RateLimits
from batchrunner.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulatorConfig:
    """Everything about one emulator instance.

    Example::

        EmulatorConfig(scale=0.02, time_scale=0, faults=FaultSpec.parse("chaos"))

    ``files_port=None`` serves result downloads on the API listener; ``0`` gives them
    their own ephemeral listener (as Stripe's ``files.stripe.com``). ``api_keys`` empty
    means one ``sk_test_`` and one ``sk_live_`` key derived from ``seed``. Run time is
    modelled as ``(run_time_base_s + run_time_per_row_s * rows_scanned) *
    U(1 - run_time_jitter, 1 + run_time_jitter) * time_scale`` (``time_scale=0``: as fast
    as DuckDB), and a ``slow_run_fraction`` of the runs (chosen by ``seed``) take
    ``slow_run_factor`` times longer. ``latency_s`` delays every ``/v1`` answer (after the
    idempotency check), to model Stripe's response times.
    """

    host: str = "127.0.0.1"
    port: int = 0
    files_port: int | None = 0
    scale: float = 1.0
    seed: int = 42
    time_scale: float = 1.0
    faults: FaultSpec = field(default_factory=FaultSpec)
    api_keys: tuple[str, ...] = ()
    rate_limits: RateLimits = field(default_factory=RateLimits)
    max_concurrent_runs: int = 20
    max_run_time_s: float = 300.0
    run_time_base_s: float = 1.0
    run_time_per_row_s: float = 2e-6
    run_time_jitter: float = 0.3
    slow_run_fraction: float = 0.0
    slow_run_factor: float = 10.0
    success_status: Literal["succeeded", "completed"] = "succeeded"
    csv_bom: bool = False
    cache_dir: Path | None = None
    results_dir: Path | None = None
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ConfigError("time_scale must be >= 0")
        if not 0 <= self.run_time_jitter < 1:
            raise ConfigError("run_time_jitter must be in [0, 1)")
        if self.max_concurrent_runs < 1:
            raise ConfigError("max_concurrent_runs must be >= 1")
        if self.max_run_time_s <= 0:
            raise ConfigError("max_run_time_s must be > 0")
        if self.run_time_base_s < 0:
            raise ConfigError("run_time_base_s must be >= 0")
        if not 0 <= self.slow_run_fraction <= 1:
            raise ConfigError("slow_run_fraction must be in [0, 1]")
        if self.slow_run_factor < 1:
            raise ConfigError("slow_run_factor must be >= 1")
        if self.latency_s < 0:
            raise ConfigError("latency_s must be >= 0")
        if self.success_status not in ("succeeded", "completed"):
            raise ConfigError("success_status must be 'succeeded' or 'completed'")

    def keys(self) -> tuple[str, ...]:
        """The accepted API keys (the defaults when none are configured)."""
        return self.api_keys or default_keys(self.seed)
