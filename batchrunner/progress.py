"""What a person sees while a run goes: bars on a terminal, plain lines otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import IO, Self

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batchrunner.engine import JobEvent

_BARS = (
    ("submitted", "submitted"),
    ("finished", "finished on Sigma"),
    ("downloaded", "downloaded"),
    ("done", "done"),
)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


class ProgressDisplay:
    """An engine observer: per-stage bars with counts, rows, bytes and ETA, or log lines.

    Use as a context manager around the run; pass the instance as the engine's observer.
    """

    def __init__(
        self, total: int, *, stream: IO[str] | None = None, live: bool | None = None
    ) -> None:
        self.console = Console(file=stream, stderr=stream is None)
        self.live = self.console.is_terminal if live is None else live
        self.total = total
        self.counts = dict.fromkeys(("submitted", "finished", "downloaded", "done"), 0)
        self.failed = 0
        self.rows = 0
        self.bytes = 0
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Self:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            for key, label in _BARS:
                self._tasks[key] = self._progress.add_task(label, total=self.total, extra="")
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: JobEvent) -> None:
        stage = event.stage
        if stage in ("submitted", "running"):
            self._advance("submitted")
        elif stage == "downloading":
            self._advance("finished")
        elif stage == "converting":
            self._advance("downloaded")
            self.bytes += event.bytes or 0
        elif stage in ("succeeded", "failed", "skipped"):
            self._done(event)

    def _advance(self, key: str) -> None:
        self.counts[key] += 1
        if self._progress is not None:
            self._progress.advance(self._tasks[key])
            if key == "downloaded":
                self._progress.update(self._tasks[key], extra=_size(self.bytes))

    def _done(self, event: JobEvent) -> None:
        self.counts["done"] += 1
        self.rows += event.rows or 0
        if event.stage == "failed":
            self.failed += 1
        if self._progress is not None:
            extra = f"{self.rows:,} rows"
            if self.failed:
                extra += f", [red]{self.failed} failed[/red]"
            self._progress.update(self._tasks["done"], advance=1, extra=extra)
            if event.stage == "failed":
                self._progress.console.print(
                    f"[red]failed[/red] {escape(event.error or '')}", markup=True, highlight=False
                )
            return
        line = f"[{self.counts['done']}/{self.total}] {event.stage} {event.job_id}"
        if event.rows is not None:
            line += f" rows={event.rows:,}"
        if event.bytes is not None:
            line += f" size={_size(event.bytes)}"
        if event.error:
            line += f": {event.error}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
