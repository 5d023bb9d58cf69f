"""The embedded local bus: a durable on-disk log with consumer-group offsets, no server.

Layout under a directory (``<data-dir>/bus`` by default)::

    <dir>/<topic>/log                    the log from its first record (offset 0, byte 0)
    <dir>/<topic>/log.<offset>.<byte>    the log after a trim: it starts at record <offset>,
                                         logical byte <byte> (the newest such file is the log)
    <dir>/<topic>/durable.json           {"position": bytes}: the log's end after the last
                                         fsynced append (written after the log's fsync)
    <dir>/<topic>/groups/<group>.json    {"offset": n, "position": bytes} of the next record
    <dir>/<topic>/groups/<group>.lock    held (flock) by the one live consumer of the group
    <dir>/<topic>/trim.lock              shared by commits, exclusive while trimming

A record is ``MAGIC(2) | crc32(4) | key_len(4) | value_len(4) | key | value``; the crc covers
the lengths, key and value. Offsets are record ordinals and positions logical bytes since
the topic began, one partition (0); a trim never changes either.

Invariants:

* Appends take an exclusive ``flock`` on the log and are fsynced on flush, so several
  producers (``ingest`` in one shell, the demo's collectors) can share a log.
* Only a *torn tail* may be cut: an incomplete last record at the very end of the log, after
  the durable end (``durable.json``: every byte before it was fsynced by an append that
  finished), i.e. a writer that died mid-append; also a tail of zero bytes, what a crash can
  leave after the file grew. Readers treat it as not yet written, the next writer truncates
  it. A log that ends, breaks or turns to zeros *before* its durable end was truncated or
  damaged in the middle: :class:`BusCorrupt` names the file, the byte, how many durable bytes
  are missing and the next step — it is never read as a torn tail (that silently dropped
  thousands of events). Any other bad record (crc mismatch, bad magic, a length that runs
  past the end with complete records behind it) raises :class:`BusCorrupt` naming the
  offset, the byte and the file, in readers and writers alike: nothing is skipped and
  nothing is cut silently.
* A group's position moves only on :meth:`LocalConsumer.commit` (atomic replace of the
  group file), so a restarted consumer re-reads what it had not committed. A saved position
  past the end of the log, not on a record boundary, or whose offset is not the number of
  records before it, is refused when the consumer opens (found by walking the record
  headers from the segment's start, never guessed from the bytes at the position).
* The group file is a hint; storage is the truth (architecture.md, invariant 6):
  :meth:`LocalConsumer.listen` seeks to storage's stored offset + 1 (found by walking the
  record headers) and names a saved position it overrides.
* One live consumer per group and bus: a second one fails at once
  (:class:`ConsumerGroupBusy`); two would both store every batch.
* :meth:`LocalBus.trim` drops the prefix that every group has committed past, by writing the
  rest to a new ``log.<offset>.<byte>`` file and removing the old one, under the log's lock
  (producers wait) and the trim lock (commits wait). A consumer whose store holds nothing of a
  trimmed log stops and names the trimmed records (they are in some other store, or lost):
  never a silent start at the first record kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import struct
import weakref
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from streams.bus import DEFAULT_MAX_BATCH_BYTES, BusRecord, RebalanceListener, RevokeCallback, offset_beyond_log
from streams.errors import BusCorrupt, ConsumerGroupBusy, StoredOffsetBeforeLog, StoredOffsetBeyondLog, StreamError

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

_MAGIC = b"GL"
_HEADER = struct.Struct(">2sIII")  # magic, crc32, key_len, value_len
_LONGEST_TAIL = 256 * 1024 * 1024  # bytes one interrupted append can leave, with room to spare
_SEGMENT = re.compile(r"^log(?:\.(\d+)\.(\d+))?$")
_WHAT_TO_DO = (
    "nothing after it is read or cut; copy the file aside for inspection, then restore the bus "
    "from a backup or re-ingest the events' source into a fresh bus directory"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """The file holding a topic's log, and the logical place its first byte has."""

    path: Path
    base_offset: int
    base_position: int


@dataclasses.dataclass(frozen=True, slots=True)
class TrimResult:
    topic: str
    dropped_records: int
    dropped_bytes: int
    kept_bytes: int


def current_segment(topic_dir: Path) -> Segment | None:
    """The log file of a topic: the one starting furthest into the log (``None`` if none)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(topic_dir):
            match = _SEGMENT.match(entry.name)
            if match and entry.is_file():
                offset, position = (int(match[1]), int(match[2])) if match[1] else (0, 0)
                found.append(Segment(Path(entry.path), offset, position))
    return max(found, key=lambda s: s.base_position, default=None)


class _Damage(Exception):
    """A record that is bad and is not a torn tail (internal; callers raise BusCorrupt)."""


def _read_at(handle, position: int, end: int) -> tuple[bytes, bytes, int] | None:
    """The record at file byte ``position``: ``(key, value, next position)``.

    ``None`` at the end of the log or at a torn tail; raises :class:`_Damage` otherwise.
    """
    if position >= end:
        return None
    handle.seek(position)
    header = handle.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None  # shorter than any record: an append cut short at the very end
    magic, crc, key_len, value_len = _HEADER.unpack(header)
    if magic != _MAGIC:
        if _zeros_to_end(handle, position, end):
            return None
        raise _Damage(f"bad magic {magic!r}")
    stop = position + _HEADER.size + key_len + value_len
    if stop > end:
        if _complete_record_after(handle, position + 1, end):
            raise _Damage(f"length {key_len + value_len} runs past the end, but complete records follow")
        return None  # an incomplete last record: the torn tail of a writer that died
    body = handle.read(key_len + value_len)
    if zlib.crc32(header[6:] + body) != crc:
        raise _Damage("crc mismatch")
    return body[:key_len], body[key_len:], stop


def _zeros_to_end(handle, position: int, end: int) -> bool:
    handle.seek(position)
    while chunk := handle.read(min(1 << 20, end - handle.tell())):
        if chunk.strip(b"\0"):
            return False
    return True


def _complete_record_after(handle, start: int, end: int) -> bool:
    """Whether a complete, crc-valid record begins anywhere in ``[start, end)``.

    One append writes at most ~8 MiB plus one record, so a remainder far larger than any
    append cannot be a torn tail: it counts as followed by records without being read."""
    if end - start > _LONGEST_TAIL:
        return True
    handle.seek(start)
    rest = handle.read(end - start)
    at = rest.find(_MAGIC)
    while at != -1:
        if at + _HEADER.size <= len(rest):
            _, crc, key_len, value_len = _HEADER.unpack_from(rest, at)
            stop = at + _HEADER.size + key_len + value_len
            if stop <= len(rest) and zlib.crc32(rest[at + 6 : stop]) == crc:
                return True
        at = rest.find(_MAGIC, at + 1)
    return False


DURABLE = "durable.json"


def read_durable_end(topic_dir: Path) -> int:
    """The log's durable end (logical byte): every byte before it was fsynced by a finished
    append. 0 when unknown (a log written before this file existed: the old rules apply)."""
    path = topic_dir / DURABLE
    try:
        doc = json.loads(path.read_bytes())
        position = doc["position"]
        if not isinstance(position, int) or position < 0:
            raise ValueError("position must be a non-negative integer")
    except FileNotFoundError:
        return 0
    except (ValueError, KeyError, TypeError) as exc:
        raise BusCorrupt(
            f"{path}: garbled durable end of the log ({exc}); delete it (the next append rewrites it; until then a "
            "cut log is told from a torn tail by the old rules only)"
        ) from exc
    return position


def _write_durable_end(topic_dir: Path, position: int) -> None:
    """Record the durable end (after the log's fsync; a lost update only makes it lower)."""
    tmp = topic_dir / f".{DURABLE}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as out:
            out.write(json.dumps({"position": position}).encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, topic_dir / DURABLE)
    finally:
        tmp.unlink(missing_ok=True)


def _cut_before_durable(path: Path, at: int, durable_in_file: int, what: str) -> BusCorrupt:
    return BusCorrupt(
        f"{path} {what} at byte {at}, but {durable_in_file - at:,} more byte(s) up to byte {durable_in_file} were "
        f"durably written (durable.json): the log was truncated or damaged in the middle, not torn by a crashed "
        f"writer; {_WHAT_TO_DO}"
    )


def _walk_headers(handle, end: int, base_offset: int, *, to_position: int | None = None,
                  to_offset: int | None = None) -> tuple[int, int]:
    """Walk record headers from file byte 0: ``(offset, file byte)`` of the record boundary
    at ``to_position`` or of record ``to_offset``, whichever is given. Raises ``LookupError``
    when the walk passes the position (not a boundary) or the log ends first."""
    position, offset = 0, base_offset
    while True:
        if to_position is not None and position >= to_position:
            if position == to_position:
                return offset, position
            raise LookupError(f"record {offset - 1} spans byte {to_position}")
        if to_offset is not None and offset == to_offset:
            return offset, position
        handle.seek(position)
        header = handle.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise LookupError(f"the log ends at record {offset} (byte {position})")
        magic, _, key_len, value_len = _HEADER.unpack(header)
        stop = position + _HEADER.size + key_len + value_len
        if magic != _MAGIC or stop > end:
            raise LookupError(f"record {offset} at byte {position} is damaged or incomplete")
        position, offset = stop, offset + 1


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class LocalBus:
    """Makes local producers and consumers over one directory."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def _topic_dir(self, topic: str) -> Path:
        path = self.directory / topic
        path.mkdir(parents=True, exist_ok=True)
        return path

    def producer(self, topic: str) -> LocalProducer:
        return LocalProducer(self._topic_dir(topic))

    def consumer(
        self,
        topic: str,
        group: str,
        on_revoke: RevokeCallback | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,  # nothing is read ahead of a poll here
    ) -> LocalConsumer:
        return LocalConsumer(self._topic_dir(topic), group)

    def topics(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if current_segment(p) is not None)

    def trim(self, topic: str) -> TrimResult:
        """Drop the records every group has committed past (see the module docstring).

        A topic no group reads is left as it is (nobody has consumed it). Raises
        :class:`BusCorrupt` if the cut point is not a record boundary.
        """
        topic_dir = self._topic_dir(topic)
        with _flock(topic_dir / "trim.lock", fcntl.LOCK_EX):
            segment = current_segment(topic_dir)
            committed = [_read_group_file(p) for p in sorted((topic_dir / "groups").glob("*.json"))]
            if segment is None or not committed:
                size = segment.path.stat().st_size if segment else 0
                return TrimResult(topic, 0, 0, size)
            cut = min(committed, key=lambda c: c["position"])
            with open(segment.path, "r+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # producers wait; released on close
                end = handle.seek(0, os.SEEK_END)
                at = cut["position"] - segment.base_position
                if at <= 0:
                    return TrimResult(topic, 0, 0, end)
                if at > end:
                    raise BusCorrupt(f"cannot trim {segment.path}: a group's saved position {cut['position']} is past its end")
                try:
                    _read_at(handle, at, end)
                except _Damage as exc:
                    raise BusCorrupt(
                        f"cannot trim {segment.path}: the cut at byte {at} is not a record boundary ({exc})"
                    ) from exc
                target = topic_dir / f"log.{cut['offset']}.{cut['position']}"
                tmp = topic_dir / f".trim-{os.getpid()}"
                try:
                    with open(tmp, "wb") as out:
                        handle.seek(at)
                        while chunk := handle.read(8 << 20):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                _fsync_dir(topic_dir)
                for entry in topic_dir.iterdir():  # the old log, and strays of crashed trims
                    if _SEGMENT.match(entry.name) and entry != target:
                        entry.unlink()
                _fsync_dir(topic_dir)
                return TrimResult(topic, cut["offset"] - segment.base_offset, at, end - at)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_group_file(path: Path) -> dict[str, int]:
    """A group file's ``{"offset", "position"}``; :class:`BusCorrupt` naming it if garbled."""
    try:
        doc = json.loads(path.read_bytes())
        offset, position = doc["offset"], doc["position"]
        if not (isinstance(offset, int) and isinstance(position, int) and offset >= 0 and position >= 0):
            raise ValueError("offset and position must be non-negative integers")
    except (ValueError, KeyError, TypeError) as exc:
        raise BusCorrupt(
            f"{path}: garbled consumer group position ({exc}); restore it from a backup, or delete it "
            "to re-read the whole log (the consumer's dedupe drops what is already stored)"
        ) from exc
    return {"offset": offset, "position": position}


class LocalProducer:
    """Appends records to a topic's log. ``flush`` makes them durable (fsync)."""

    def __init__(self, topic_dir: Path):
        self._dir = topic_dir
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # every byte of file ``_known[0]`` before ``_known[1]`` is complete, checked records
        self._known: tuple[int, int] | None = None  # (inode, file byte)

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
        while True:
            found = current_segment(self._dir)
            segment = found or Segment(self._dir / "log", 0, 0)
            try:  # create only the first log: a trimmed-away one must not come back empty
                fd = os.open(segment.path, os.O_RDWR | (0 if found else os.O_CREAT), 0o644)
            except FileNotFoundError:  # a trim removed it between listing and opening
                continue
            with open(fd, "r+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                if os.fstat(handle.fileno()).st_nlink == 0 or current_segment(self._dir) != segment:
                    continue  # trimmed meanwhile: append to the new log
                self._append(handle, segment)
                break
        self._pending.clear()
        self._pending_bytes = 0

    def _append(self, handle, segment: Segment) -> None:
        inode = os.fstat(handle.fileno()).st_ino
        end = handle.seek(0, os.SEEK_END)
        durable = read_durable_end(self._dir) - segment.base_position  # in this file's bytes
        if end < durable:
            raise _cut_before_durable(segment.path, end, durable, "ends")
        position = 0
        if self._known is not None and self._known[0] == inode and self._known[1] <= end:
            position = self._known[1]
        offset = None if position else segment.base_offset  # ordinals are known from the start only
        while True:
            try:
                record = _read_at(handle, position, end)
            except _Damage as exc:
                where = f"offset {offset}" if offset is not None else "an offset after the last append"
                raise BusCorrupt(f"bad record at {where} (byte {position}) in {segment.path}: {exc}; {_WHAT_TO_DO}") from exc
            if record is None:
                break
            position = record[2]
            offset = None if offset is None else offset + 1
        if position != end:  # torn tail of a crashed writer: the one thing that is cut
            if position < durable:
                raise _cut_before_durable(segment.path, position, durable, "breaks off (an incomplete or zeroed record)")
            handle.truncate(position)
        handle.seek(position)
        handle.write(b"".join(self._pending))
        handle.flush()
        os.fsync(handle.fileno())
        self._known = (inode, handle.tell())
        _write_durable_end(self._dir, segment.base_position + handle.tell())

    def close(self) -> None:
        self.flush()


class LocalConsumer:
    """Reads a topic's log from the group's committed position; one live consumer per group."""

    def __init__(self, topic_dir: Path, group: str):
        if not group or "/" in group or group.startswith("."):
            raise StreamError(f"bad consumer group name {group!r}")
        self._dir = topic_dir
        self._topic = topic_dir.name
        self.topic = self._topic
        self.group = group
        groups = topic_dir / "groups"
        groups.mkdir(parents=True, exist_ok=True)
        self._group_file = groups / f"{group}.json"
        self._lock_fd = os.open(groups / f"{group}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        self._release = weakref.finalize(self, os.close, self._lock_fd)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._release()
            raise ConsumerGroupBusy(
                f"another consumer of group {group!r} is running on the local bus in {topic_dir.parent} "
                "(two would store every event twice): stop it first, or give this one another data dir"
            ) from None
        try:
            self._start()
        except BaseException:
            self._release()
            raise

    def _start(self) -> None:
        committed = self._read_committed()
        self._offset, self._position = committed["offset"], committed["position"]
        self._positions: dict[int, int] = {self._offset: self._position}
        segment = current_segment(self._dir)
        if not self._group_file.exists():
            return  # never committed: starts at the first record there is
        if segment is None:
            if self._position:
                raise BusCorrupt(f"{self._group_file}: saved position {self._position} is past the end of an empty log in {self._dir}")
            return
        self._check_saved_position(segment)

    def _check_saved_position(self, segment: Segment) -> None:
        """Refuse a saved position past the end of the log, between records, or whose offset
        is not the number of records before it (a hand-edited or mixed-up group file)."""
        if self._position < segment.base_position:
            if self._group_file.exists():
                raise BusCorrupt(
                    f"{self._group_file}: saved position {self._position} lies before the start of "
                    f"{segment.path} (byte {segment.base_position} of the log): those records were trimmed"
                )
            return
        with open(segment.path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            at = self._position - segment.base_position
            if at > end:
                raise BusCorrupt(
                    f"{self._group_file}: saved position {self._position} (offset {self._offset}) is past the end "
                    f"of {segment.path} ({end + segment.base_position} bytes); the log was cut or replaced: restore "
                    "the bus from a backup, or delete the group file to re-read the whole log"
                )
            try:
                offset, _ = _walk_headers(handle, end, segment.base_offset, to_position=at)
            except LookupError as exc:
                raise BusCorrupt(
                    f"{self._group_file}: saved position {self._position} (offset {self._offset}) is not on a record "
                    f"boundary of {segment.path} ({exc}); restore the group file from a backup, or delete it to "
                    "re-read the whole log"
                ) from exc
            if offset != self._offset:
                raise BusCorrupt(
                    f"{self._group_file}: saved position {self._position} is the start of record {offset}, not of "
                    f"offset {self._offset} as the file says; restore the group file from a backup, or delete it "
                    "to re-read the whole log"
                )

    def listen(self, listener: RebalanceListener) -> None:
        """The local bus has one partition, assigned to this consumer as it opens: ask
        ``listener`` where it resumes (storage's stored offset + 1; nothing stored: the first
        record kept), seek there and save that as the group's position. A saved position
        storage disagrees with is named in the log and overridden (storage wins); a stored
        offset past the log's end raises :class:`StoredOffsetBeyondLog`.

        The byte position of an offset is found by walking the record headers of the log
        from its first kept record (the saved byte position is not trusted to match its
        offset): one read of the headers at start, none afterwards."""
        wanted = listener.on_assign([0]).get(0)
        saved = self._offset if self._group_file.exists() else None
        self._seek(wanted)
        if saved is not None and saved != self._offset:
            if wanted is None:
                why = "storage holds nothing of this partition"
            else:
                why = f"storage holds it up to offset {wanted - 1}"
            # behind: a crash between a batch's commit and the bus's (normal); ahead: a position
            # that storage cannot explain (a lost newest commit, a moved group file): named
            log.log(
                logging.WARNING if saved > self._offset else logging.INFO,
                "local bus group %s of %s: saved position offset %d is %s storage; %s, so reading resumes at "
                "offset %d (storage wins)", self.group, self._topic, saved,
                "ahead of" if saved > self._offset else "behind", why, self._offset,
            )
        if saved != self._offset:
            self.commit({0: self._offset})

    def _seek(self, offset: int | None) -> None:
        segment = current_segment(self._dir)
        base = segment or Segment(self._dir / "log", 0, 0)
        if offset is None:
            if base.base_offset > 0:
                # trimmed records are ones some store holds; this one holds none of them
                raise StoredOffsetBeforeLog(
                    f"partition 0 of {self._topic} (local bus {self._dir.parent}): storage holds nothing of it, but "
                    f"the log now starts at offset {base.base_offset} ({base.path}): records 0..{base.base_offset - 1} "
                    "were trimmed after another store took them (is --data-dir the store this bus fed?); point the "
                    "consumer at that store, or, if they are accounted for, re-base deliberately: gpuledger offsets "
                    f"rebase --topic {self._topic} --partition 0 --to {base.base_offset} --reason '<why>'"
                )
            offset = base.base_offset
        if offset < base.base_offset:
            raise StoredOffsetBeforeLog(
                f"partition 0 of {self._topic} (local bus {self._dir.parent}): storage holds it up to offset "
                f"{offset - 1}, but the log now starts at offset {base.base_offset} ({base.path}): records "
                f"{offset}..{base.base_offset - 1} were trimmed before they were stored; restore the bus from a backup"
            )
        at, current = 0, base.base_offset
        if segment is not None:
            with open(segment.path, "rb") as handle:
                end = handle.seek(0, os.SEEK_END)
                while current < offset:
                    handle.seek(at)
                    header = handle.read(_HEADER.size)
                    if len(header) < _HEADER.size:
                        break
                    magic, _crc, key_len, value_len = _HEADER.unpack(header)
                    stop = at + _HEADER.size + key_len + value_len
                    if magic != _MAGIC or stop > end:
                        try:
                            if _read_at(handle, at, end) is None:
                                break  # a torn tail: the log ends here
                        except _Damage as exc:
                            self._offset = current
                            raise self._corrupt(segment, at, exc) from exc
                    at, current = stop, current + 1
        if current < offset:
            raise StoredOffsetBeyondLog(offset_beyond_log(self._topic, 0, offset - 1, current, "local"))
        self._offset, self._position = offset, base.base_position + at
        self._positions = {self._offset: self._position}

    def _read_committed(self) -> dict[str, int]:
        if not self._group_file.exists():
            return {"offset": 0, "position": 0}
        return _read_group_file(self._group_file)

    def _segment_for_read(self) -> Segment | None:
        segment = current_segment(self._dir)
        if segment is not None and self._position < segment.base_position:
            if self._group_file.exists():
                raise BusCorrupt(f"{self._group_file}: position {self._position} was trimmed from {segment.path}")
            # never committed: start at the first record kept, as a new group does
            self._offset, self._position = segment.base_offset, segment.base_position
            self._positions = {self._offset: self._position}
        return segment

    def poll_batch(
        self, max_records: int, timeout_s: float, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    ) -> list[BusRecord]:
        segment = self._segment_for_read()
        if segment is None:
            return []
        records: list[BusRecord] = []
        size = 0
        with open(segment.path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            while len(records) < max_records and size < max_batch_bytes:
                at = self._position - segment.base_position
                try:
                    record = _read_at(handle, at, end)
                except _Damage as exc:
                    if records:
                        break  # hand over the good records first; the next poll stops here
                    raise self._corrupt(segment, at, exc) from exc
                if record is None:
                    if not records:
                        self._check_not_cut(segment, at)
                    break  # end, or a torn tail: not yet (or never) complete
                key, value, stop = record
                if records and size + len(value) > max_batch_bytes:
                    break  # the byte bound: this record starts the next batch (not consumed)
                records.append(BusRecord(self._topic, 0, self._offset, key or None, value))
                size += len(value)
                self._offset += 1
                self._position = stop + segment.base_position
                self._positions[self._offset] = self._position
        return records

    def _check_not_cut(self, segment: Segment, at: int) -> None:
        """The log ends (or tears) at file byte ``at``: fine after the durable end, damage before
        it — unless a writer appended or a trim replaced the file meanwhile (read it again)."""
        durable = read_durable_end(self._dir) - segment.base_position
        if at >= durable or current_segment(self._dir) != segment:
            return
        with open(segment.path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            try:
                if _read_at(handle, at, end) is not None:
                    return  # appended since the first look: the next poll reads it
            except _Damage as exc:
                raise self._corrupt(segment, at, exc) from exc
        what = "ends" if at >= end else "breaks off (an incomplete or zeroed record)"
        raise _cut_before_durable(segment.path, at, durable, what)

    def _corrupt(self, segment: Segment, at: int, exc: _Damage) -> BusCorrupt:
        return BusCorrupt(f"bad record at offset {self._offset} (byte {at}) in {segment.path}: {exc}; {_WHAT_TO_DO}")

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        if 0 not in next_offsets:
            return
        offset = next_offsets[0]
        if offset not in self._positions:
            raise StreamError(f"commit of offset {offset} that was never read")
        payload = json.dumps({"offset": offset, "position": self._positions[offset]}).encode()
        tmp = self._group_file.with_name(f"{self._group_file.name}.tmp-{os.getpid()}")
        with _flock(self._dir / "trim.lock", fcntl.LOCK_SH):
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                with open(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self._group_file)
            finally:
                tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves nothing behind
        self._positions = {k: v for k, v in self._positions.items() if k >= offset}

    lag_unit = "bytes"  # what :meth:`lag` counts: records would mean reading the backlog

    def lag(self) -> dict[int, int]:
        """Bytes of log after the position (a torn tail a crashed producer left counts until
        the next producer cuts it off)."""
        segment = current_segment(self._dir)
        if segment is None:
            return {0: 0}
        try:
            end = segment.base_position + segment.path.stat().st_size
        except FileNotFoundError:
            return {0: 0}
        return {0: max(0, end - self._position)}

    def caught_up(self) -> bool:
        segment = self._segment_for_read()
        if segment is None:
            return True
        with open(segment.path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            at = self._position - segment.base_position
            try:
                done = _read_at(handle, at, end) is None
            except _Damage as exc:
                raise self._corrupt(segment, at, exc) from exc
        if done:
            self._check_not_cut(segment, at)
        return done

    def stopped_partitions(self) -> dict[int, Exception]:
        """Always ``{}``: one partition, so a stored offset the log does not reach raises."""
        return {}

    def close(self) -> None:
        """Release the group (another consumer of it may start now)."""
        self._release()
