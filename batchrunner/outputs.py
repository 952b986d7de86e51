"""Atomic output files and the run manifest.

Every output is written under a hidden temporary name in its final directory
(``.<name>.<uuid4 hex>.tmp``), flushed to disk, then renamed over the final name, and the
directory is flushed so the rename itself survives a crash. A final path therefore holds
either nothing, the previous complete file, or the new complete file, even after ``kill -9``
or a power cut; only temporary names can be left behind, and :func:`sweep_stale_temps`
removes those at the next start.

Writing failures that the user must fix (disk full, read-only or forbidden directory, a
parent that is not a directory) become :class:`~batchrunner.errors.OutputError` with a
message saying what to do; the temporary file is removed and the previous final file, like
the state file, is left as it was.

``manifest.json`` beside the outputs lists every finished job: its parameters, run id,
output path (relative to the output directory), rows, bytes, SQL hash and timings.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Final, TypeVar

from batchrunner.errors import OutputError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MANIFEST_NAME: Final = "manifest.json"
MANIFEST_VERSION: Final = 1
_MANIFEST_FORMAT: Final = "batchrunner-manifest"

# Our temporary names only: ".<final name, maybe cut>.<32 hex>.tmp". Nothing else matches.
_TEMP_RE: Final = re.compile(r"\A\..+\.[0-9a-f]{32}\.tmp\Z", re.DOTALL)
# Keep temp names under the usual 255-byte file name limit whatever the final name is.
_MAX_STEM: Final = 200

_KEPT = "finished jobs are kept"
_HINTS: Final[Mapping[int, str]] = {
    errno.ENOSPC: f"no space left on device; free space and rerun: {_KEPT}",
    errno.EDQUOT: f"disk quota exceeded; free space and rerun: {_KEPT}",
    errno.EFBIG: f"file too large for this file system; write elsewhere and rerun: {_KEPT}",
    errno.EROFS: f"read-only file system; choose a writable output directory and rerun: {_KEPT}",
    errno.EACCES: f"permission denied; make the output directory writable and rerun: {_KEPT}",
    errno.EPERM: f"operation not permitted; make the output directory writable and rerun: {_KEPT}",
    errno.ENOTDIR: f"a parent of this path is not a directory; fix the output path: {_KEPT}",
    errno.EEXIST: f"a parent of this path is not a directory; fix the output path: {_KEPT}",
    errno.EISDIR: f"the output path is a directory; fix the output path: {_KEPT}",
    errno.ENAMETOOLONG: f"the file name is too long; shorten the output pattern: {_KEPT}",
}
# Errors that can only come from writing, so they are ours even when raised by the caller's
# writer inside atomic_output (pyarrow sets errno on its OSErrors too).
_WRITE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def output_error(path: Path, exc: OSError) -> OutputError:
    """Translate an OS error met while writing ``path`` into an :class:`OutputError`."""
    hint = _HINTS.get(exc.errno or 0)
    message = hint or f"{exc.strerror or exc}; fix the problem and rerun: {_KEPT}"
    return OutputError(str(path), message)


def temp_path_for(final: Path) -> Path:
    """A unique hidden name beside ``final``, for writing it; parent directories are created."""
    _make_dirs(final.parent, final)
    stem = final.name[:_MAX_STEM]
    return final.with_name(f".{stem}.{uuid.uuid4().hex}.tmp")


@contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final`` atomically.

    Write the whole file to the yielded path and close it before the block ends. On a clean
    exit the file is fsynced, renamed over ``final`` and the directory fsynced. On any
    exception (cancellation and ``KeyboardInterrupt`` included) the temporary file is
    removed and the exception re-raised; disk-full and read-only errors, from this function
    or from the writer in the block, are raised as :class:`OutputError`.

    It blocks (fsync): async code runs the whole block in a worker thread.

    Example::

        with atomic_output(out / "2024-01.parquet") as tmp:
            pyarrow.parquet.write_table(table, tmp)
    """
    tmp = temp_path_for(final)
    try:
        yield tmp
    except OSError as exc:
        _unlink_quietly(tmp)
        if _is_output_problem(exc, tmp, final):
            raise output_error(final, exc) from exc
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    # The writer is done: make the bytes durable, then publish them under the final name.
    try:
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except FileNotFoundError as exc:
        _unlink_quietly(tmp)
        if _names(exc, tmp):
            raise OutputError(str(final), "the writer left no file to publish") from exc
        raise output_error(final, exc) from exc
    except OSError as exc:
        _unlink_quietly(tmp)
        raise output_error(final, exc) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path``, atomically (see :func:`atomic_output`)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write(text + "\n")


def sweep_stale_temps(root: Path) -> int:
    """Remove temporary files left under ``root`` by killed runs; return how many.

    Only names :func:`temp_path_for` makes are touched, never symlinks or directories.
    Call it at start-up while holding the state lock: it would also delete the temporary
    file of a write in progress.
    """
    removed = 0
    if not root.is_dir():
        return 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if not _TEMP_RE.match(name):
                continue
            candidate = Path(dirpath, name)
            if candidate.is_symlink() or not candidate.is_file():
                continue
            try:
                candidate.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    return removed


class _BadManifest(ValueError):
    """A manifest that parses as JSON but does not have the expected shape."""


# -- manifest --------------------------------------------------------------------------------

Param = str | int | float | bool | None


def utc_iso(ts: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds: ``2024-01-31T12:00:00.000Z``."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One finished job as the manifest lists it."""

    job_id: str
    params: Mapping[str, Param]
    query_run_id: str
    output: str
    """Path of the output relative to the output directory, with ``/`` separators."""
    rows: int
    bytes: int
    sql_hash: str
    timings: Mapping[str, float] = field(hash=False)
    finished_at: str
    """ISO 8601 UTC, see :func:`utc_iso`."""

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object."""
        return {
            "job_id": self.job_id,
            "params": dict(self.params),
            "query_run_id": self.query_run_id,
            "output": self.output,
            "rows": self.rows,
            "bytes": self.bytes,
            "sql_hash": self.sql_hash,
            "timings": dict(self.timings),
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, obj: object) -> ManifestEntry:
        """Parse one entry; ``ValueError`` if it does not have the expected shape."""
        if not isinstance(obj, dict):
            raise _BadManifest("entry is not an object")
        params = obj.get("params")
        timings = obj.get("timings")
        if not isinstance(params, dict) or not all(
            isinstance(v, str | int | float | bool | None) for v in params.values()
        ):
            raise ValueError("params must be an object of scalars")
        if not isinstance(timings, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in timings.values()
        ):
            raise ValueError("timings must be an object of numbers")
        return cls(
            job_id=_typed(obj, "job_id", str),
            params=MappingProxyType(dict(params)),
            query_run_id=_typed(obj, "query_run_id", str),
            output=_typed(obj, "output", str),
            rows=_typed(obj, "rows", int),
            bytes=_typed(obj, "bytes", int),
            sql_hash=_typed(obj, "sql_hash", str),
            timings=MappingProxyType({str(k): float(v) for k, v in timings.items()}),
            finished_at=_typed(obj, "finished_at", str),
        )


def _typed(obj: dict[str, Any], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    # bool is an int to isinstance, but a bool row count is a corrupt manifest.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{key} must be {kind.__name__}")
    return value


class Manifest:
    """``manifest.json`` of one output directory, keyed by job id.

    Load it, :meth:`upsert` entries as jobs finish, :meth:`save` (atomic). Saving rewrites
    the whole file, so with many jobs save in batches rather than after every job. If the
    file on disk cannot be read as a manifest, :meth:`load` moves it aside to
    ``manifest.json.corrupt-<UTC time>`` (see :attr:`recovered_from`) and starts empty.
    """

    def __init__(self, out_dir: Path, entries: Mapping[str, ManifestEntry] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self._entries: dict[str, ManifestEntry] = dict(entries or {})
        self.recovered_from: Path | None = None
        """Where an unreadable manifest found by :meth:`load` was moved, if one was."""

    @property
    def path(self) -> Path:
        """``<out_dir>/manifest.json``."""
        return self.out_dir / MANIFEST_NAME

    @property
    def entries(self) -> Mapping[str, ManifestEntry]:
        """Every entry by job id (read-only view)."""
        return MappingProxyType(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, job_id: str) -> ManifestEntry | None:
        """The entry of ``job_id``, if it finished."""
        return self._entries.get(job_id)

    def upsert(self, entry: ManifestEntry) -> None:
        """Add or replace the entry of ``entry.job_id`` (in memory until :meth:`save`)."""
        if PurePosixPath(entry.output).is_absolute() or Path(entry.output).is_absolute():
            raise ValueError(f"manifest output must be relative to {self.out_dir}: {entry.output}")
        self._entries[entry.job_id] = entry

    def to_json(self) -> dict[str, Any]:
        """The whole manifest as a JSON object."""
        return {
            "format": _MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "jobs": {job_id: self._entries[job_id].to_json() for job_id in sorted(self._entries)},
        }

    def save(self) -> None:
        """Write the manifest atomically (raises :class:`OutputError` if it cannot)."""
        write_json_atomic(self.path, self.to_json())

    @classmethod
    def load(cls, out_dir: Path, *, clock: Callable[[], float] = time.time) -> Manifest:
        """The manifest in ``out_dir``; empty if there is none, fresh if it is unreadable."""
        manifest = cls(out_dir)
        path = manifest.path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return manifest
        except OSError as exc:
            raise output_error(path, exc) from exc
        try:
            manifest._entries = _parse_manifest(raw)
        except ValueError as exc:
            aside = _corrupt_name(path, clock())
            try:
                os.replace(path, aside)
            except OSError as move_exc:
                raise output_error(aside, move_exc) from move_exc
            log.warning("unreadable manifest %s (%s) moved to %s; starting fresh", path, exc, aside)
            manifest.recovered_from = aside
        return manifest


def _parse_manifest(raw: bytes) -> dict[str, ManifestEntry]:
    """Entries by job id; ``ValueError`` (incl. JSON and UTF-8 errors) on any wrong shape."""
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != _MANIFEST_FORMAT:
        raise ValueError("not a batchrunner manifest")
    if doc.get("version") != MANIFEST_VERSION:
        raise ValueError(f"unknown manifest version {doc.get('version')!r}")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict):
        raise _BadManifest("jobs must be an object")
    entries: dict[str, ManifestEntry] = {}
    for job_id, obj in jobs.items():
        entry = ManifestEntry.from_json(obj)
        if entry.job_id != job_id:
            raise ValueError(f"entry under {job_id!r} names job {entry.job_id!r}")
        entries[job_id] = entry
    return entries


def _corrupt_name(path: Path, now: float) -> Path:
    stamp = datetime.fromtimestamp(now, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return candidate


# -- file system steps -----------------------------------------------------------------------


def _make_dirs(directory: Path, final: Path) -> None:
    """Create missing directories top-down, flushing each new entry into its parent."""
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for new_dir in reversed(missing):
        try:
            new_dir.mkdir()
        except FileExistsError as exc:
            if not new_dir.is_dir():
                raise output_error(final, exc) from exc
        except OSError as exc:
            raise output_error(final, exc) from exc
        try:
            _fsync_dir(new_dir.parent)
        except OSError as exc:
            raise output_error(final, exc) from exc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory so a rename or a new entry in it survives a power cut."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot sync a directory; the rename is still atomic there.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        log.warning("could not remove temporary file %s", path)


def _names(exc: OSError, *paths: Path) -> bool:
    """Whether the error names one of ``paths``."""
    wanted = {str(p) for p in paths}
    return any(str(n) in wanted for n in (exc.filename, exc.filename2) if n is not None)


def _is_output_problem(exc: OSError, tmp: Path, final: Path) -> bool:
    """Whether an error raised by the caller's writer is about writing the output.

    Disk full and friends always are. Permission and path errors are when they name our
    files or name nothing (pyarrow's do not); one naming another file is the caller's own.
    """
    if exc.errno in _WRITE_ERRNOS:
        return True
    if exc.errno not in _HINTS:
        return False
    return (exc.filename is None and exc.filename2 is None) or _names(exc, tmp, final, final.parent)
