"""AuditFile: records queued by the request path, written by one thread per process.

Fork-safe: a process forked after the file was opened (gunicorn's or multiprocessing's workers)
does not write into its parent's file, which would interleave two chains, and does not lose its
records either: on its first record it opens a file of its own with its own genesis.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

from asgi_identity.audit._keys import SigningKeySource, load_signing_key
from asgi_identity.audit._writer import ChainWriter, DigestPolicy

_internal_logger = logging.getLogger("asgi_identity")

_open_files: weakref.WeakSet[AuditFile] = weakref.WeakSet()


class AuditFile:
    """Appends records to a chained JSON Lines file, signing a digest every so often.

    `path` may hold `{pid}` (one file per process, e.g. `audit-{pid}.jsonl`); a process forked
    later writes to the path for its own pid, or `<name>-<pid><suffix>` without `{pid}`.
    `append()` only queues the record: the event loop never waits on the disk.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signing_key: SigningKeySource,
        *,
        digest_every: int = 1000,
        digest_seconds: float = 60.0,
        rotate_bytes: int | None = None,
        rotate_seconds: float | None = None,
        fsync: bool = False,
        max_pending: int = 100_000,
    ) -> None:
        if max_pending < 1:
            raise ValueError("AuditFile: max_pending must be at least 1")
        if digest_every < 1:
            raise ValueError("AuditFile: digest_every must be at least 1")
        if not digest_seconds > 0:
            raise ValueError("AuditFile: digest_seconds must be more than 0")
        if rotate_bytes is not None and rotate_bytes < 1:
            raise ValueError("AuditFile: rotate_bytes must be at least 1")
        if rotate_seconds is not None and not rotate_seconds > 0:
            raise ValueError("AuditFile: rotate_seconds must be more than 0")
        self._key = load_signing_key(signing_key, "AuditFile")
        self._template = os.fspath(path)
        self._policy = DigestPolicy(digest_every, digest_seconds, rotate_bytes, rotate_seconds)
        self._fsync = fsync
        self._max_pending = max_pending
        self._reset()
        # Opened here, genesis written: a path that cannot be written fails at start-up.
        self._chain: ChainWriter | None = ChainWriter(
            _path_for(self._template, os.getpid(), forked=False),
            self._key,
            self._policy,
            fsync=fsync,
        )
        self._start()

    def _reset(self) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._pending = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="asgi-identity-audit", daemon=True)
        self._thread.start()
        _open_files.add(self)

    @property
    def path(self) -> Path:
        """The file this process writes now."""
        chain = self._chain
        return chain.path if chain is not None else Path(self._template)

    @property
    def writer(self) -> str | None:
        """This process's writer id, as its genesis records name it."""
        chain = self._chain
        return chain.writer if chain is not None else None

    def append(self, record: dict[str, Any]) -> None:
        """Queue `record` (a JSON-able dict; `kind`, `seq`, `prev`, `sig` are the writer's)."""
        with self._cond:
            if self._closing:
                raise RuntimeError(f"AuditFile {self._template} is closed")
            if self._thread is None:
                self._start()  # the first record of a forked process: its own file
            if self._pending >= self._max_pending:
                # The disk cannot keep up: losing a record is bad, stalling every request worse.
                # The loss is counted in the next signed digest.
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    _internal_logger.error(
                        "audit file %s is not keeping up: %d records dropped",
                        self._template,
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
        """Write what is queued and the closing digest, and let go of the file."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        _open_files.discard(self)
        if thread is None:
            return
        # A writer still busy after `timeout` keeps the file (and its lock) rather than being
        # cut off mid-record; it writes the closing digest when done.
        thread.join(timeout)
        if thread.is_alive():
            _internal_logger.warning(
                "audit file %s: still writing %d queued records after %ss",
                self.path,
                self._pending,
                timeout,
            )

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        chain = self._chain
        if chain is None:
            try:
                chain = self._chain = ChainWriter(
                    _path_for(self._template, os.getpid(), forked=True),
                    self._key,
                    self._policy,
                    fsync=self._fsync,
                )
            except Exception:
                _internal_logger.exception(
                    "audit file %s: this process cannot open its own file; its records are lost",
                    self._template,
                )
                with self._cond:
                    self._closing = True
                    self.dropped += self._pending
                    self._pending = 0
                    self._queue.clear()
                    self._cond.notify_all()
                return
        try:
            self._drain(chain)
        finally:
            try:
                chain.close()
            except Exception:
                _internal_logger.exception("audit file %s: no closing digest", chain.path)

    def _drain(self, chain: ChainWriter) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: bool(self._queue) or self._closing, chain.due(time.monotonic())
                )
                batch = list(self._queue)
                self._queue.clear()
                closing = self._closing
                chain.dropped = self.dropped
            try:
                if batch:
                    chain.write(batch)
                chain.tick(time.monotonic())
            except Exception:  # the writer must outlive a bad record or a full disk
                _internal_logger.exception("audit file %s: could not write records", chain.path)
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()
            if closing and not batch:
                return

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its locks may be held by it: start over.
        # Records the parent had queued are the parent's, and its own thread writes them.
        closing = self._closing
        chain, self._chain = self._chain, None
        self._reset()
        self._closing = closing
        if chain is not None:
            chain.abandon()  # the parent's file: closed here without a byte written
        if not closing:
            _open_files.add(self)


def _path_for(template: str, pid: int, *, forked: bool) -> Path:
    if "{pid}" in template:
        return Path(template.replace("{pid}", str(pid)))
    path = Path(template)
    if not forked:
        return path
    return path.with_name(f"{path.stem}-{pid}{path.suffix}")


def close_all() -> None:
    """Close every open AuditFile of this process (at exit, also in multiprocessing children)."""
    for file in list(_open_files):
        file.close()


def _in_child() -> None:
    for file in list(_open_files):
        file._after_fork_in_child()


def _finalize_in_multiprocessing_child(_: object) -> None:
    # A process forked by multiprocessing ends with os._exit(): atexit never runs there, but
    # its finalizers do. Registered in each child, as _bootstrap() clears the parent's.
    from multiprocessing import util

    util.Finalize(None, close_all, exitpriority=10)


class _Anchor:
    pass


_ANCHOR = _Anchor()
os.register_at_fork(after_in_child=_in_child)
atexit.register(close_all)
try:
    from multiprocessing import util as _mp_util

    _mp_util.register_after_fork(_ANCHOR, _finalize_in_multiprocessing_child)
except ImportError:  # pragma: no cover - a platform without multiprocessing
    pass
