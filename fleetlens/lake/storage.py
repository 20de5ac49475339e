"""``lake.storage_options`` translated for each engine that reaches the lake.

The options are spelled as delta-rs and polars take them: object_store's configuration keys
(``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``...). Both are
built on object_store, so they get them as they are; pyarrow's filesystem and Hadoop's S3A
connector (Spark) have their own names, mapped here. This module is the only place that
knows those names: everything else asks :class:`~fleetlens.lake.paths.Lake`.

Nothing here touches the network: :func:`pyarrow_filesystem` is called on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = [
    "S3_SCHEMES",
    "delta_options",
    "polars_options",
    "pyarrow_filesystem",
    "pyarrow_s3_options",
    "spark_hadoop_conf",
]

#: URI schemes of an S3 (or S3-compatible) lake root; delta-rs takes both.
S3_SCHEMES: Final = frozenset({"s3", "s3a"})

_TRUE = frozenset({"1", "true", "yes", "on"})
#: Default region of an S3-compatible endpoint without one (object_store's default too).
_DEFAULT_REGION = "us-east-1"


def delta_options(options: Mapping[str, str]) -> dict[str, str] | None:
    """Options for delta-rs (``DeltaTable``, ``write_deltalake``): as configured."""
    return dict(options) or None


def polars_options(options: Mapping[str, str]) -> dict[str, str] | None:
    """Options for polars' cloud readers (``scan_parquet``, ``scan_delta``): as configured.
    polars, like delta-rs, ignores keys it does not know (``AWS_S3_LOCKING_PROVIDER``...)."""
    return dict(options) or None


def _normalised(options: Mapping[str, str]) -> dict[str, str]:
    """Keys upper case without the ``AWS_`` prefix, the aliases object_store accepts for one
    key folded into one (``AWS_ENDPOINT``/``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``...)."""
    aliases = {"ENDPOINT_URL": "ENDPOINT", "DEFAULT_REGION": "REGION", "TOKEN": "SESSION_TOKEN"}
    out: dict[str, str] = {}
    for key, value in options.items():
        name = key.upper().removeprefix("AWS_")
        out[aliases.get(name, name)] = value
    return out


def pyarrow_s3_options(options: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of :class:`pyarrow.fs.S3FileSystem` for the same store.

    Without a region or an endpoint the region is left out: :func:`pyarrow_filesystem` then
    asks S3 for the bucket's (a request, made on first use only).

    Raises:
        ValueError: An ``http://`` endpoint without ``AWS_ALLOW_HTTP=true`` (which delta-rs
            and polars would refuse), or an endpoint that is not an http(s) URL.
    """
    opts = _normalised(options)
    kwargs: dict[str, Any] = {}
    for ours, theirs in (
        ("ACCESS_KEY_ID", "access_key"),
        ("SECRET_ACCESS_KEY", "secret_key"),
        ("SESSION_TOKEN", "session_token"),
        ("REGION", "region"),
    ):
        if opts.get(ours):
            kwargs[theirs] = opts[ours]
    if opts.get("VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in _TRUE:
        kwargs["force_virtual_addressing"] = True
    if endpoint := opts.get("ENDPOINT"):
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"lake endpoint {endpoint!r} is not an http(s) URL")
        if url.scheme == "http" and opts.get("ALLOW_HTTP", "").lower() not in _TRUE:
            raise ValueError(
                f"lake endpoint {endpoint!r} is plain http: set AWS_ALLOW_HTTP=true in "
                "lake.storage_options to allow it"
            )
        kwargs["scheme"] = url.scheme
        kwargs["endpoint_override"] = url.netloc
        kwargs.setdefault("region", _DEFAULT_REGION)
    return kwargs


def pyarrow_filesystem(scheme: str, bucket: str, options: Mapping[str, str]) -> pafs.FileSystem:
    """The pyarrow filesystem of a lake root's scheme (``file``, ``s3``...).

    Args:
        scheme: The root's URI scheme.
        bucket: The root's first path segment (the bucket of an object store).
        options: ``lake.storage_options``.
    """
    if scheme == "file":
        return pafs.LocalFileSystem()
    if scheme in S3_SCHEMES:
        kwargs = pyarrow_s3_options(options)
        if "region" not in kwargs:
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        # Delayed open: an object smaller than a part (checkpoints, most landing files) is
        # stored with one PUT when the stream closes, not create/upload/complete.
        return pafs.S3FileSystem(allow_delayed_open=True, **kwargs)
    # Other stores (gs://, hdfs://...): pyarrow's own defaults for the scheme.
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return filesystem


def spark_hadoop_conf(options: Mapping[str, str]) -> dict[str, str]:
    """Spark configuration (``spark.hadoop.fs.s3a.*``) for an S3 lake through Hadoop's S3A
    connector, which needs the hadoop-aws jar on Spark's classpath.

    ``s3://`` paths (as delta-rs and polars spell them) are mapped to S3A as well.
    """
    opts = _normalised(options)
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    }
    for ours, theirs in (
        ("ACCESS_KEY_ID", "access.key"),
        ("SECRET_ACCESS_KEY", "secret.key"),
        ("SESSION_TOKEN", "session.token"),
        ("REGION", "endpoint.region"),
        ("ENDPOINT", "endpoint"),
    ):
        if opts.get(ours):
            conf[f"spark.hadoop.fs.s3a.{theirs}"] = opts[ours]
    if opts.get("SESSION_TOKEN"):
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
            "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        )
    if opts.get("ENDPOINT"):
        # S3-compatible stores are addressed by path, as object_store does by default.
        virtual = opts.get("VIRTUAL_HOSTED_STYLE_REQUEST", "").lower() in _TRUE
        conf["spark.hadoop.fs.s3a.path.style.access"] = str(not virtual).lower()
        https = urlsplit(opts["ENDPOINT"]).scheme == "https"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(https).lower()
    return conf
