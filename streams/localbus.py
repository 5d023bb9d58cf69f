"""The embedded local bus: a durable on-disk log with consumer-group offsets, no server.

Layout under a directory (``<data-dir>/bus`` by default)::

    <dir>/<topic>/log            records appended one after another
    <dir>/<topic>/groups/<group>.json   {"offset": n, "position": bytes} of the next record

A record is ``MAGIC(2) | crc32(4) | key_len(4) | value_len(4) | key | value``; the crc covers
the lengths, key and value. Appends take an exclusive ``flock`` on the log and are fsynced
on flush, so several producers (``ingest`` in one shell, the demo's collectors) can share a
log. A torn tail (a crash in the middle of an append) is detected by length or crc, ignored by
readers and truncated by the next writer. Offsets are record ordinals, one partition (0).
A consumer's position moves only on :meth:`LocalConsumer.commit` (atomic replace of the
group file), so a restarted consumer re-reads what it had not committed.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from streams.bus import BusRecord, RevokeCallback
from streams.errors import StreamError

_MAGIC = b"GL"
_HEADER = struct.Struct(">2sIII")  # magic, crc32, key_len, value_len


class LocalBus:
    """Makes local producers and consumers over one directory."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def _log(self, topic: str) -> Path:
        path = self.directory / topic
        path.mkdir(parents=True, exist_ok=True)
        return path / "log"

    def producer(self, topic: str) -> LocalProducer:
        return LocalProducer(self._log(topic))

    def consumer(
        self, topic: str, group: str, on_revoke: RevokeCallback | None = None
    ) -> LocalConsumer:
        return LocalConsumer(self._log(topic), group)


def _scan_valid_end(handle, start: int) -> int:
    """Byte position after the last complete, crc-valid record from ``start``."""
    handle.seek(start)
    position = start
    while True:
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return position
        magic, crc, key_len, value_len = _HEADER.unpack(header)
        body = handle.read(key_len + value_len)
        if magic != _MAGIC or len(body) < key_len + value_len:
            return position
        if zlib.crc32(header[6:] + body) != crc:
            return position
        position += _HEADER.size + key_len + value_len


class LocalProducer:
    """Appends records to a topic's log. ``flush`` makes them durable (fsync)."""

    def __init__(self, log_path: Path):
        self._path = log_path
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._known_valid_end = 0  # every byte before this is complete, checked records

    def send(self, key: str, value: bytes) -> None:
        key_bytes = key.encode()
        lengths = struct.pack(">II", len(key_bytes), len(value))
        crc = zlib.crc32(lengths + key_bytes + value)
        record = _MAGIC + struct.pack(">I", crc) + lengths + key_bytes + value
        self._pending.append(record)
        self._pending_bytes += len(record)
        if self._pending_bytes > 8 * 1024 * 1024:
            self.flush()

    def flush(self, timeout_s: float | None = None) -> None:
        if not self._pending:
            return
        with open(self._path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                end = handle.seek(0, os.SEEK_END)
                start = self._known_valid_end if self._known_valid_end <= end else 0
                valid = _scan_valid_end(handle, start)
                if valid != end:  # torn tail of a crashed writer: cut it off
                    handle.truncate(valid)
                handle.seek(valid)
                handle.write(b"".join(self._pending))
                handle.flush()
                os.fsync(handle.fileno())
                self._known_valid_end = handle.tell()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        self._pending.clear()
        self._pending_bytes = 0

    def close(self) -> None:
        self.flush()


class LocalConsumer:
    """Reads a topic's log from the group's committed position."""

    def __init__(self, log_path: Path, group: str):
        if not group or "/" in group:
            raise StreamError(f"bad consumer group name {group!r}")
        self._path = log_path
        self._group_file = log_path.parent / "groups" / f"{group}.json"
        self._group_file.parent.mkdir(parents=True, exist_ok=True)
        committed = self._read_committed()
        self._offset = committed["offset"]
        self._position = committed["position"]
        # byte position of each offset handed out but not yet committed
        self._positions: dict[int, int] = {self._offset: self._position}

    def _read_committed(self) -> dict[str, int]:
        if not self._group_file.exists():
            return {"offset": 0, "position": 0}
        return json.loads(self._group_file.read_text())

    def poll_batch(
        self, max_records: int, timeout_s: float, max_batch_bytes: int = 64 * 1024 * 1024
    ) -> list[BusRecord]:
        if not self._path.exists():
            return []
        records = []
        size = 0
        topic = self._path.parent.name
        with open(self._path, "rb") as handle:
            handle.seek(self._position)
            while len(records) < max_records and size < max_batch_bytes:
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                magic, crc, key_len, value_len = _HEADER.unpack(header)
                body = handle.read(key_len + value_len)
                if magic != _MAGIC or len(body) < key_len + value_len:
                    break  # torn tail: not yet (or never) complete
                if zlib.crc32(header[6:] + body) != crc:
                    break
                records.append(
                    BusRecord(topic, 0, self._offset, body[:key_len] or None, body[key_len:])
                )
                size += value_len
                self._offset += 1
                self._position += _HEADER.size + key_len + value_len
                self._positions[self._offset] = self._position
        return records

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        if 0 not in next_offsets:
            return
        offset = next_offsets[0]
        if offset not in self._positions:
            raise StreamError(f"commit of offset {offset} that was never read")
        payload = json.dumps({"offset": offset, "position": self._positions[offset]})
        tmp = self._group_file.with_suffix(".tmp")
        tmp.write_text(payload)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self._group_file)
        self._positions = {k: v for k, v in self._positions.items() if k >= offset}

    lag_unit = "bytes"  # what :meth:`lag` counts: records would mean reading the backlog

    def lag(self) -> dict[int, int]:
        """Bytes of log after the position (a torn tail a crashed producer left counts until
        the next producer cuts it off)."""
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            size = 0
        return {0: max(0, size - self._position)}

    def caught_up(self) -> bool:
        if not self._path.exists():
            return True
        with open(self._path, "rb") as handle:
            return _scan_valid_end(handle, self._position) == self._position

    def seek_to_committed(self) -> None:
        """Forget uncommitted reads: the next poll starts at the last commit (like a restart)."""
        committed = self._read_committed()
        self._offset, self._position = committed["offset"], committed["position"]
        self._positions = {self._offset: self._position}

    def close(self) -> None:
        return None
