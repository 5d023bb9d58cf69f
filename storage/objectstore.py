"""Where an ``s3://bucket/prefix`` data directory lives, and how each library is told.

Endpoint, region and credentials come from the caller's settings or, for each one not given,
from the standard environment variables every S3 tool reads: ``AWS_ENDPOINT_URL``,
``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``.
pyarrow (single files, manifests), delta-rs (table commits) and Polars (scans) each take them
in their own spelling; this module is the one place that translates. Secrets are never part
of ``repr`` or of an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow.fs as pafs

from storage.errors import StorageError

_KEYS = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    access_key_id: str | None = field(repr=False)
    secret_access_key: str | None = field(repr=False)

    @property
    def fs_root(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def url(self) -> str:
        return f"s3://{self.fs_root}"

    def _scheme_host(self) -> tuple[str, str | None]:
        if not self.endpoint_url:
            return "https", None
        parsed = urlparse(self.endpoint_url)
        return parsed.scheme or "https", parsed.netloc or parsed.path

    def filesystem(self) -> pafs.S3FileSystem:
        scheme, host = self._scheme_host()
        return pafs.S3FileSystem(
            access_key=self.access_key_id,
            secret_key=self.secret_access_key,
            region=self.region,
            endpoint_override=host,
            scheme=scheme,
            allow_bucket_creation=False,
        )

    def _options(self, spelling: dict[str, str]) -> dict[str, str]:
        values = {
            "region": self.region, "endpoint": self.endpoint_url,
            "allow_http": "true" if (self.endpoint_url or "").startswith("http://") else None,
            "key": self.access_key_id, "secret": self.secret_access_key,
        }
        return {spelling[name]: value for name, value in values.items() if value}

    def delta_options(self) -> dict[str, str]:
        """For delta-rs (object_store), with etag conditional puts: atomic commits on SeaweedFS."""
        return self._options({"region": "AWS_REGION", "endpoint": "AWS_ENDPOINT_URL", "allow_http": "AWS_ALLOW_HTTP",
                              "key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"}) | {"conditional_put": "etag"}

    def polars_options(self) -> dict[str, str]:
        return self._options({"region": "aws_region", "endpoint": "aws_endpoint_url", "allow_http": "aws_allow_http",
                              "key": "aws_access_key_id", "secret": "aws_secret_access_key"})


def parse_s3_root(root: str, options: Mapping[str, str] | None = None) -> S3Location:
    """``s3://bucket/prefix`` plus settings (keys as in :data:`_KEYS`) or the environment."""
    parsed = urlparse(root)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{root!r} is not an s3://bucket/prefix data directory")
    given = {k.upper(): v for k, v in (options or {}).items() if v}

    def pick(key: str, *alternatives: str) -> str | None:
        for name in (key, *alternatives):
            if given.get(name):
                return given[name]
            if os.environ.get(name):
                return os.environ[name]
        return None

    return S3Location(
        bucket=parsed.netloc,
        prefix=parsed.path.strip("/"),
        endpoint_url=pick("AWS_ENDPOINT_URL"),
        region=pick("AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        access_key_id=pick("AWS_ACCESS_KEY_ID"),
        secret_access_key=pick("AWS_SECRET_ACCESS_KEY"),
    )


_REFUSED = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden")


def refused_credentials_hint(error_text: str) -> str:
    """What to do when the store refused our credentials ('' if the error is something else)."""
    if not any(marker in error_text for marker in _REFUSED):
        return ""
    return (
        " — the S3 server refused the credentials: check AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or [storage] in gpuledger.toml) and that the key may use the bucket"
    )
