"""AuditFile: records appended to a JSON Lines file, chained, by one writer thread per file."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from asgi_identity.audit._chain import canonical, file_key, mac
from asgi_identity.audit._verify import verify_audit_file

try:
    import fcntl

    _CAN_LOCK = True
except ImportError:  # pragma: no cover - not POSIX: no lock against a second writer
    _CAN_LOCK = False

_internal_logger = logging.getLogger("asgi_identity")


class AuditFile:
    """Appends records to a JSON Lines file, each chained to the one before by HMAC-SHA256.

    `append()` only queues the record: a writer thread serializes, signs and writes, so the
    event loop never waits on the disk. An existing file is continued where its chain ends.
    """

    def __init__(
        self,
        path: str | Path,
        key: bytes | str,
        *,
        fsync: bool = False,
        max_pending: int = 100_000,
    ) -> None:
        key = file_key(key)
        if max_pending < 1:
            raise ValueError("AuditFile: max_pending must be at least 1")
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._max_pending = max_pending
        # Unbuffered: after a failed write nothing is left in a buffer to reach the disk later.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            _lock(self._fd, self.path)
            self._previous, self._seq = _chain_end(self.path, key)
        except BaseException:
            os.close(self._fd)
            raise
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closing = False
        self.dropped = 0
        self._thread = threading.Thread(
            target=self._run, name=f"asgi-identity-audit:{self.path.name}", daemon=True
        )
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        """Queue `record` (a JSON-able dict, without `seq`/`mac`) to be signed and written."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"AuditFile {self.path} is closed")
            if self._pending >= self._max_pending:
                # The disk cannot keep up: losing a record is bad, stalling every request worse.
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    _internal_logger.error(
                        "audit file %s is not keeping up: %d records dropped",
                        self.path,
                        self.dropped,
                    )
                return
            self._queue.append(record)
            self._pending += 1
            self._cond.notify()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every queued record is on disk; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        # The writer closes the file once the queue is written: a writer still busy after
        # `timeout` keeps it (and its lock) rather than being cut off mid-record.
        self._thread.join(timeout)
        if self._thread.is_alive():
            _internal_logger.warning(
                "audit file %s: still writing %d queued records after %ss",
                self.path,
                self._pending,
                timeout,
            )

    @property
    def last_mac(self) -> str:
        return self._previous

    def _run(self) -> None:
        try:
            self._drain()
        finally:
            os.close(self._fd)  # also lets go of the lock

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                batch = list(self._queue)
                self._queue.clear()
                if not batch and self._closing:
                    return
            try:
                self._write(batch)
            except Exception:  # the writer must outlive a bad record or a full disk
                _internal_logger.exception("audit file %s: could not write records", self.path)
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # Signed into locals: the chain end moves only once the records are on disk, so a
        # record that cannot be encoded or a failed write never leaves a gap in the chain.
        seq, previous = self._seq, self._previous
        lines = []
        for record in batch:
            signed = dict(record)
            signed["seq"] = seq + 1
            try:
                encoded = canonical(signed)
            except (TypeError, ValueError) as exc:
                _internal_logger.error(
                    "audit file %s: a record could not be written (not JSON): %s", self.path, exc
                )
                continue
            seq += 1
            previous = mac(self._key, previous, encoded)
            signed["mac"] = previous
            lines.append(canonical(signed) + b"\n")
        if not lines:
            return
        end = os.fstat(self._fd).st_size
        try:
            self._write_all(b"".join(lines))
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # Cut what reached the disk, so the file still ends at the last committed record.
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                _internal_logger.exception(
                    "audit file %s: could not cut a partial write", self.path
                )
            _internal_logger.error(
                "audit file %s: %d records could not be written: %s", self.path, len(lines), exc
            )
            return
        self._seq, self._previous = seq, previous

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the open file: two writers would interleave their chains."""
    if not _CAN_LOCK:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(
            f"audit file {path} is in use by another writer (another process, or an AuditFile "
            "not yet closed): use one audit file per process, e.g. with the pid in its name"
        ) from None


def _chain_end(path: Path, key: bytes) -> tuple[str, int]:
    """The MAC and sequence number the next record continues from (empty file: "", 0)."""
    if not path.exists() or path.stat().st_size == 0:
        return "", 0
    result = verify_audit_file(path, key)
    if not result.ok:
        raise ValueError(
            f"audit file {path} does not verify ({result.reason} at line {result.line}); "
            "move it aside before appending, and keep it as evidence"
        )
    return result.last_mac or "", result.records
