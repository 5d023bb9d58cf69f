"""Where a file of the system lives: a local path or ``s3://bucket/prefix/…`` — a value, not a path.

STYLE 17: ``pathlib`` never sees a URL. ``Path("s3://bucket/prefix")`` is the *relative*
local path ``s3:/bucket/prefix``; code that joined it and wrote there filled a directory
literally named ``s3:`` in whatever directory the process ran from (the consumer heartbeat
did). :class:`Location` knows both kinds, and every file the system writes outside the Delta
tables (the consumer heartbeat, the store's owner record; offered to the scheduler's lock and
job store) is named by one and read and written through :func:`filesystem_of`.

* ``Location.parse("s3://b/p")`` and the mangled ``s3:/b/p`` a ``Path`` made of it are the
  same object-store location; anything else is a local path, made absolute at parse time (a
  later ``chdir`` does not move it).
* ``join`` appends ``/``-separated parts; ``local_path`` refuses an object-store location.
* Writes are whole-object: one PUT on S3, temp file + fsync + rename locally, so a reader
  never sees half a file. :func:`create_new` is a create-if-absent (``O_EXCL`` locally; on S3
  a check, a PUT and a read-back, see its docstring).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from storage.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# pyarrow is imported on use only: settings (and so every CLI command, the node agent's
# included) hold Locations, and the agent must start without pyarrow (test_architecture)


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """A local absolute path or an ``s3://bucket/key`` URL (``url`` is its one spelling)."""

    url: str

    @classmethod
    def parse(cls, text: str | os.PathLike[str]) -> Location:
        raw = os.fspath(text)
        if raw.startswith("s3://"):
            return cls("s3://" + raw[len("s3://") :].strip("/"))
        if raw.startswith("s3:/"):  # what pathlib made of s3://bucket/prefix
            return cls("s3://" + raw[len("s3:/") :].strip("/"))
        return cls(str(Path(raw).expanduser().absolute()))

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def join(self, *parts: str) -> Location:
        if self.is_s3:
            return Location(posixpath.join(self.url, *parts))
        return Location(str(Path(self.url).joinpath(*parts)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    def local_path(self) -> Path:
        if self.is_s3:
            raise StorageError(f"{self.url} is on object storage, not a local path")
        return Path(self.url)

    def __str__(self) -> str:
        return self.url


def filesystem_of(location: Location, s3_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for ``location``; S3 options as in :mod:`storage.objectstore`."""
    import pyarrow.fs as pafs

    from storage.objectstore import parse_s3_root

    if location.is_s3:
        bucket, _, key = location.url[len("s3://") :].partition("/")
        s3 = parse_s3_root(f"s3://{bucket}", s3_options)
        return s3.filesystem(), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), location.url


def read_bytes(location: Location, s3_options: Mapping[str, str] | None = None) -> bytes:
    """The file's bytes; ``FileNotFoundError`` when there is none."""
    if not location.is_s3:
        return Path(location.url).read_bytes()
    import pyarrow.fs as pafs

    fs, path = filesystem_of(location, s3_options)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(location.url)
    with fs.open_input_stream(path) as handle:
        return handle.read()


def write_atomic(location: Location, data: bytes, s3_options: Mapping[str, str] | None = None) -> None:
    """Replace the file whole: readers see the old bytes or the new ones."""
    if location.is_s3:
        fs, path = filesystem_of(location, s3_options)
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    target = Path(location.url)
    tmp = _complete_temp_beside(target, data)
    try:
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _complete_temp_beside(target: Path, data: bytes) -> Path:
    """``data`` written and fsynced to a temporary file in ``target``'s directory (made if
    missing), ready to be renamed or linked into place; deleted again if the write fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def create_new(location: Location, data: bytes, s3_options: Mapping[str, str] | None = None) -> bool:
    """Create the file with ``data`` unless it exists; ``True`` when this call created it.

    Local: ``O_CREAT | O_EXCL`` (exactly one of two racing creators wins). S3 through pyarrow
    has no conditional PUT: the file is written only when absent and read back; two creators
    racing within one round trip both "win" and the later bytes stay — callers read the file
    back after creating and trust only what is there (the owner record does).
    """
    if location.is_s3:
        import pyarrow.fs as pafs

        fs, path = filesystem_of(location, s3_options)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        with fs.open_output_stream(path) as out:
            out.write(data)
        return True
    target = Path(location.url)
    tmp = _complete_temp_beside(target, data)
    try:
        try:
            os.link(tmp, target)  # atomic create-if-absent of a complete file
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def root_of(store) -> tuple[Location, dict[str, str]]:  # noqa: ANN001 - storage.dataset.Store (no import cycle)
    """A store's root as a :class:`Location`, with the S3 options its files are reached with."""
    s3 = store.location
    if s3 is None:
        return Location.parse(store.root), {}
    options = {
        "AWS_ENDPOINT_URL": s3.endpoint_url, "AWS_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": s3.access_key_id, "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
    }
    return Location.parse(s3.url), {k: v for k, v in options.items() if v}
