"""Lake locations: one root (local path or ``s3://bucket/prefix``) and the layout beneath it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from fleetlens.config import LakeSettings

__all__ = ["Lake"]


class Lake:
    """The lake at ``lake.root`` with a pyarrow filesystem to reach it.

    Args:
        settings: The ``lake`` section of the settings.
    """

    LANDING_METRICS = "landing/metrics"

    def __init__(self, settings: LakeSettings) -> None:
        self.root = settings.root
        self._storage_options = settings.storage_options
        if "://" in settings.root:
            self.fs, self._base = pafs.FileSystem.from_uri(settings.root)
        else:
            self.fs, self._base = pafs.LocalFileSystem(), settings.root

    @property
    def is_local(self) -> bool:
        """Whether the lake is on the local filesystem (atomic renames, fsync)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """A filesystem path below the root, for ``self.fs``."""
        return "/".join([self._base.rstrip("/"), *parts])

    def table_uri(self, name: str) -> str:
        """Where the Delta table ``name`` lives (``<root>/tables/<name>``)."""
        return self.uri("tables", name)

    @property
    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs and polars (object-store credentials, endpoint...)."""
        return {k: v.get_secret_value() for k, v in self._storage_options.items()}

    def uri(self, *parts: str) -> str:
        """A URI below the root, for engines that open paths themselves (Spark, polars)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri_of(self, path: str) -> str:
        """The URI of a path of ``self.fs`` (e.g. from a listing), for Spark or polars."""
        if self.is_local:
            return path
        return f"{self.root.split('://', 1)[0]}://{path}"

    def write_bytes_atomically(self, path: str, data: bytes) -> None:
        """Write a small file so that readers see either the old or the new content, durably."""
        if not self.is_local:
            # An object store's PUT is atomic.
            with self.fs.open_output_stream(path) as out:
                out.write(data)
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


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
