"""Lake locations: one root (local path or ``s3://bucket/prefix``) and the layout beneath it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from fleetlens.config import LakeSettings
from fleetlens.lake import storage
from fleetlens.lake.storage import S3_SCHEMES

__all__ = ["Lake", "fsync_dir", "put_object"]


class Lake:
    """The lake at ``lake.root`` with a pyarrow filesystem to reach it.

    Construction does no I/O: the filesystem is built from ``lake.storage_options`` on first
    use of :attr:`fs` (for S3 that may mean a request, to find the bucket's region when no
    region or endpoint is configured).

    Args:
        settings: The ``lake`` section of the settings.

    Raises:
        ValueError: The storage options are inconsistent (see
            :func:`~fleetlens.lake.storage.pyarrow_s3_options`).
    """

    LANDING_METRICS = "landing/metrics"

    def __init__(self, settings: LakeSettings) -> None:
        self.root = settings.root
        self._storage_options = settings.storage_options
        scheme, sep, rest = settings.root.partition("://")
        self.scheme = scheme.lower() if sep else "file"
        #: The root as a path of ``self.fs`` (``bucket/prefix`` on an object store).
        self._base = rest if sep else settings.root
        if self.scheme in S3_SCHEMES:
            storage.pyarrow_s3_options(self.storage_options)  # refuse bad options now
        self._fs: pafs.FileSystem | None = None
        self._fs_lock = threading.Lock()

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem of the root, built on first use."""
        if self._fs is None:
            with self._fs_lock:
                if self._fs is None:
                    bucket = self._base.split("/", 1)[0]
                    self._fs = storage.pyarrow_filesystem(self.scheme, bucket, self.storage_options)
        return self._fs

    @property
    def is_local(self) -> bool:
        """Whether the lake is on the local filesystem (atomic renames, fsync)."""
        return self.scheme == "file"

    def path(self, *parts: str) -> str:
        """A filesystem path below the root, for ``self.fs``."""
        return "/".join([self._base.rstrip("/"), *parts])

    def table_uri(self, name: str) -> str:
        """Where the Delta table ``name`` lives (``<root>/tables/<name>``)."""
        return self.uri("tables", name)

    @property
    def storage_options(self) -> dict[str, str]:
        """``lake.storage_options`` with the secrets revealed, as configured."""
        return {k: v.get_secret_value() for k, v in self._storage_options.items()}

    @property
    def delta_options(self) -> dict[str, str] | None:
        """The storage options of delta-rs (``DeltaTable``, ``write_deltalake``)."""
        return storage.delta_options(self.storage_options)

    @property
    def polars_options(self) -> dict[str, str] | None:
        """The storage options of polars' readers (``scan_parquet``, ``scan_delta``)."""
        return storage.polars_options(self.storage_options)

    def uri(self, *parts: str) -> str:
        """A URI below the root, for engines that open paths themselves (Spark, polars)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, path: str) -> str:
        """The URI of a path of ``self.fs`` (e.g. from a listing), for Spark or polars."""
        if self.is_local:
            return path
        return f"{self.root.split('://', 1)[0]}://{path}"

    def write_bytes_atomically(self, path: str, data: bytes) -> None:
        """Write a file so that readers see either the old or the new content, durably."""
        if not self.is_local:
            put_object(self.fs, path, data)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        fsync_dir(target.parent)

    def read_bytes(self, path: str) -> bytes | None:
        """The file's content, or None if it does not exist."""
        try:
            with self.fs.open_input_stream(path) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None


def put_object(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Store ``data`` as the object at ``path`` of an object store, whole or not at all.

    An object store has no rename, and needs none: S3 makes an object visible only when its
    upload completes (the one PUT, or CompleteMultipartUpload for a large one), and then
    whole, replacing the previous version at once; a read after that sees it (S3 has been
    strongly consistent since 2020), and a reader never sees part of it. The one way to get
    a partial object is pyarrow completing an upload of part of the content: its stream
    completes the upload when closed, also when closed by an exception between two writes.
    So the content is built in memory by the caller and written in one call, and an upload
    that fails is not completed (pyarrow completes only when every part was stored).
    """
    with fs.open_output_stream(path) as out:
        out.write(data)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
