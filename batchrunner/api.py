"""The narrow seam between the engine and a query API.

The engine only ever sees :class:`QueryApi` and the plain values defined here; HTTP,
headers, retries and Stripe's JSON live behind it (see :mod:`batchrunner.client`). A
different backend (Stripe's v2 query runs, a test double for pure engine policy) implements
the same four methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

IN_PROGRESS_STATUSES = frozenset({"pending", "running"})
SUCCESS_STATUSES = frozenset({"succeeded", "completed"})


@dataclass(frozen=True, slots=True)
class QueryRun:
    """What the engine needs to know about one query run."""

    id: str
    status: str
    created: int
    finalized_at: int | None = None
    file_id: str | None = None
    error_message: str | None = None
    livemode: bool = False

    @property
    def in_progress(self) -> bool:
        """Still pending or running on the server."""
        return self.status in IN_PROGRESS_STATUSES

    @property
    def succeeded(self) -> bool:
        """Finished with a result (``succeeded``, or ``completed`` as Stripe's examples say)."""
        return self.status in SUCCESS_STATUSES

    @property
    def failed(self) -> bool:
        """Terminal without success: ``failed`` or any status this client does not know."""
        return not self.in_progress and not self.succeeded


@dataclass(frozen=True, slots=True)
class Download:
    """A finished download: the bytes on disk and whether it resumed with ``Range``."""

    path: Path
    size: int
    resumed: int = 0
    restarted: int = 0


class QueryApi(Protocol):
    """Create and poll query runs and fetch their results."""

    async def create_run(
        self, *, sql: str | None = None, saved_query: str | None = None, idempotency_key: str
    ) -> QueryRun:
        """Submit a run of ``sql`` or of a saved query; safe to repeat with the same key."""
        ...

    async def retrieve_run(self, run_id: str) -> QueryRun:
        """Fetch the current state of a run."""
        ...

    async def download(
        self, file_id: str, dest: Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Download:
        """Stream the result file to ``dest`` (created or truncated), complete or raise."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
