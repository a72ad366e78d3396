"""One writer's files on disk: a genesis record, chained records, signed digests, rotation.

Runs on the AuditFile's writer thread only. Each batch is built in locals and the chain moves on
only once its bytes are on disk, so a failed write or a record that cannot be encoded leaves no
gap: the file still ends at a whole, chained line.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from asgi_identity.audit._chain import FORMAT_VERSION, RESERVED, canonical, line_hash
from asgi_identity.audit._keys import key_id, sign
from asgi_identity.audit._records import timestamp

try:
    import fcntl

    _CAN_LOCK = True
except ImportError:  # pragma: no cover - not POSIX: no lock against a second writer
    _CAN_LOCK = False

_internal_logger = logging.getLogger("asgi_identity")


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    every: int  # records
    seconds: float
    rotate_bytes: int | None
    rotate_seconds: float | None


@dataclass(frozen=True, slots=True)
class _Head:
    prev: str | None  # the hash of the last line written (None before any file)
    records: int  # records written by this writer, all its files
    digests: int
    since_digest: int  # records after the last digest
    lost: int  # records this writer could not write (encoding, disk)


def part_path(base: Path, part: int) -> Path:
    """Rotated files are named after the first: audit.jsonl, audit.1.jsonl, audit.2.jsonl..."""
    return base if part == 0 else base.with_name(f"{base.stem}.{part}{base.suffix}")


def last_part(base: Path) -> int | None:
    pattern = re.compile(re.escape(base.stem) + r"\.([1-9][0-9]{0,8})" + re.escape(base.suffix))
    parts = [0] if base.exists() else []
    if base.parent.is_dir():
        for entry in base.parent.iterdir():
            found = pattern.fullmatch(entry.name)
            if found:
                parts.append(int(found.group(1)))
    return max(parts, default=None)


class ChainWriter:
    def __init__(self, base: Path, key: Ed25519PrivateKey, policy: DigestPolicy, *, fsync: bool):
        self._key = key
        self._policy = policy
        self._fsync = fsync
        self.writer = secrets.token_hex(16)
        self._kid = key_id(key)
        self._started = timestamp(time.time())
        self.dropped = 0  # records the queue refused, counted by AuditFile
        self._fd = -1
        self._size = 0
        self.path = base
        self._opened = self._last_digest = time.monotonic()
        self._records_at_open = 0
        # A restart on the same path continues the chain of the files already there.
        previous = last_part(base)
        part, prev = 0, None
        if previous is not None:
            part, prev = previous + 1, _end_of(part_path(base, previous))
        self._head = _Head(prev, 0, 0, 0, 0)
        self._base = base
        self._part = part
        self._open(part)

    # -- files ---------------------------------------------------------------------------------

    def _open(self, part: int) -> None:
        path = part_path(self._base, part)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _lock(fd, path)
            head = self._head
            genesis: dict[str, Any] = {
                "kind": "genesis",
                "v": FORMAT_VERSION,
                "writer": self.writer,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self._started,
                "time": timestamp(time.time()),
                "file": path.name,
                "part": part,
                "kid": self._kid,
                "prev": head.prev,
                "records": head.records,
                "digests": head.digests,
                "lost": head.lost + self.dropped,
            }
            genesis["sig"] = sign(self._key, genesis)
            line = canonical(genesis)
            _write_all(fd, line + b"\n")
            size = os.fstat(fd).st_size
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        old = self._fd
        self._fd, self.path, self._part, self._size = fd, path, part, size
        self._head = replace(head, prev=line_hash(line))
        self._opened = time.monotonic()
        self._records_at_open = head.records
        if old >= 0:
            os.close(old)  # only now: until the next file is locked, the old one stays locked

    def close(self) -> None:
        """The closing digest, then let go of the file (and its lock)."""
        try:
            self.digest("shutdown")
        finally:
            self.abandon()

    def abandon(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- writing -------------------------------------------------------------------------------

    def write(self, batch: list[dict[str, Any]]) -> None:
        head, lines, size = self._head, [], self._size
        every, limit = self._policy.every, self._policy.rotate_bytes
        for record in batch:
            line_record = {k: v for k, v in record.items() if k not in RESERVED}
            line_record.update(kind="record", seq=head.records + 1, prev=head.prev)
            try:
                line = canonical(line_record)
            except (TypeError, ValueError) as exc:
                _internal_logger.error(
                    "audit file %s: a record could not be written (not JSON): %s", self.path, exc
                )
                head = replace(head, lost=head.lost + 1)
                continue
            lines.append(line)
            size += len(line) + 1
            head = replace(
                head,
                prev=line_hash(line),
                records=head.records + 1,
                since_digest=head.since_digest + 1,
            )
            if head.since_digest >= every:
                line, head = self._digest_line(head, None)
                lines.append(line)
                size += len(line) + 1
            if limit is not None and size >= limit:
                # Rotated between two records, so no file grows far past the limit.
                if self._commit(lines, head):
                    self.rotate()
                head, lines, size = self._head, [], self._size
        self._commit(lines, head)

    def due(self, now: float) -> float | None:
        """Seconds until a digest or a rotation is due by time (None: nothing pending)."""
        waits = []
        if self._head.since_digest:
            waits.append(self._last_digest + self._policy.seconds - now)
        if self._policy.rotate_seconds is not None:
            waits.append(self._opened + self._policy.rotate_seconds - now)
        return max(0.0, min(waits)) if waits else None

    def tick(self, now: float) -> None:
        rotate_seconds = self._policy.rotate_seconds
        if rotate_seconds is not None and now - self._opened >= rotate_seconds:
            if self._head.records > self._records_at_open:
                self.rotate()
            else:  # an idle file is not rotated: its age counts from now
                self._opened = now
        elif self._head.since_digest and now - self._last_digest >= self._policy.seconds:
            self.digest(None)

    def rotate(self) -> None:
        self.digest("rotate")
        self._open(self._part + 1)

    def digest(self, end: str | None) -> None:
        line, head = self._digest_line(self._head, end)
        self._commit([line], head)

    def _digest_line(self, head: _Head, end: str | None) -> tuple[bytes, _Head]:
        digest: dict[str, Any] = {
            "kind": "digest",
            "digest": head.digests + 1,
            "records": head.records,
            "lost": head.lost + self.dropped,
            "time": timestamp(time.time()),
            "prev": head.prev,
        }
        if end is not None:
            digest["end"] = end
        digest["sig"] = sign(self._key, digest)
        line = canonical(digest)
        return line, replace(head, prev=line_hash(line), digests=head.digests + 1, since_digest=0)

    def _commit(self, lines: list[bytes], head: _Head) -> bool:
        if not lines:
            self._head = replace(self._head, lost=head.lost)
            return True
        records = head.records - self._head.records
        end = os.fstat(self._fd).st_size
        data = b"".join(line + b"\n" for line in lines)
        try:
            _write_all(self._fd, data)
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # Cut what reached the disk, so the file still ends at the last whole line.
            try:
                os.ftruncate(self._fd, end)
            except OSError:
                _internal_logger.exception(
                    "audit file %s: could not cut a partial write", self.path
                )
            self._head = replace(self._head, lost=head.lost + records)
            _internal_logger.error(
                "audit file %s: %d records could not be written: %s", self.path, records, exc
            )
            return False
        if head.digests != self._head.digests:
            self._last_digest = time.monotonic()
        self._head = head
        self._size = end + len(data)
        return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the open file: two writers would interleave their chains."""
    if not _CAN_LOCK:  # pragma: no cover - not POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(
            f"audit file {path} is in use by another writer (another process, or an AuditFile "
            "not yet closed): give each process its own file, e.g. path='audit-{pid}.jsonl'"
        ) from None


def _end_of(path: Path) -> str | None:
    """The hash of `path`'s last whole line, which a restarted writer's genesis continues from.

    The file must not be held by a live writer: its end would move under the new one.
    """
    with path.open("rb") as file:
        _lock(file.fileno(), path)
        size = file.seek(0, os.SEEK_END)
        chunk = 1 << 16
        while True:
            start = max(0, size - chunk)
            file.seek(start)
            data = file.read()
            end = data.rfind(b"\n")
            begin = data.rfind(b"\n", 0, max(end, 0)) + 1
            if begin > 0 or start == 0:
                break
            chunk *= 4  # a line longer than what was read: read more of the tail
    return None if end < 0 else line_hash(data[begin:end])
