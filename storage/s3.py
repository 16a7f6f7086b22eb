"""What pyarrow's S3 filesystem cannot do: a conditional create, for the store's writer lease.

pyarrow writes and reads every object of an `s3://` store; this module is the one home of boto3
and does one thing pyarrow has no call for: `PUT` with `If-None-Match: *`, which the server
accepts only when the key does not exist (AWS S3 since 2024, MinIO, moto). Two writers racing for
the lease object cannot both win, which is what `O_EXCL` gives the lock on a local disk.

The client is built from the same `store.uri` pyarrow reads (`s3://bucket/prefix?endpoint_override=
host:port&scheme=http&region=...`); credentials come from the usual AWS environment variables or
config files, as for pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from sisa.storage.errors import StoreError


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str | None

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel


def parse_s3_uri(uri: str) -> S3Location:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"store.uri {uri!r} should be s3://bucket/prefix[?endpoint_override=host:port&scheme=http]")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    endpoint = query.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
    return S3Location(parsed.netloc, parsed.path.strip("/"), endpoint, query.get("region"))


class ConditionalPut:
    """Create-if-absent, read and delete-if-unchanged of single small objects under a store."""

    def __init__(self, uri: str):
        import boto3  # only a store on S3 needs it
        from botocore.config import Config

        self.loc = parse_s3_uri(uri)
        self.client = boto3.client(
            "s3",
            endpoint_url=self.loc.endpoint_url,
            region_name=self.loc.region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def create(self, rel: str, body: bytes) -> str | None:
        """Write `rel` only if no object is there; its ETag, or None if one was."""
        try:
            out = self.client.put_object(Bucket=self.loc.bucket, Key=self.loc.key(rel), Body=body, IfNoneMatch="*")
        except self.client.exceptions.ClientError as e:
            if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise StoreError(f"the S3 server refused the lease object {rel!r}: {_code(e)}") from None
        return out["ETag"]

    def read(self, rel: str) -> tuple[bytes, str] | None:
        """(body, ETag) of `rel`, None if absent."""
        try:
            out = self.client.get_object(Bucket=self.loc.bucket, Key=self.loc.key(rel))
        except self.client.exceptions.ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                return None
            raise
        return out["Body"].read(), out["ETag"]

    def delete(self, rel: str, etag: str) -> None:
        """Delete `rel` if it is still the object with `etag` (a lease taken over meanwhile by
        another writer is left alone). Servers without conditional deletes ignore the header."""
        try:
            self.client.delete_object(Bucket=self.loc.bucket, Key=self.loc.key(rel), IfMatch=etag)
        except self.client.exceptions.ClientError as e:
            if _code(e) not in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                raise


def _code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
