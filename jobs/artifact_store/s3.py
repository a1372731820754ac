"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph RGW...), through boto3.

Selected by KD_ARTIFACT_URL=s3://bucket/prefix (plus KD_S3_ENDPOINT_URL, KD_S3_ACCESS_KEY_ID,
KD_S3_SECRET_ACCESS_KEY, KD_S3_REGION); the interface is `ArtifactStore`'s, the keys the same.
An object `key` lives at `{prefix}/{key}` in the bucket.

- Writes stream in multipart parts of KD_S3_PART_BYTES: at most one part is held in memory. The
  size cap is enforced on the way; past it (or on any error) the multipart upload is aborted, so
  nothing is left behind, not even invisible parts. The sha256 is computed on the way; since
  S3 metadata is fixed when an upload starts, a multipart upload goes to a temporary key under
  `{prefix}/.uploads/` (never a valid key) and is then copied server-side to its key with the
  sha256 in its metadata (`x-amz-meta-sha256`) and the temporary object deleted. An object of
  one part is a single PUT with its metadata. Either way a reader sees the old object or the new
  one, never half of one (S3 objects appear whole).
- Reads stream with HTTP Range (`iter_range`); `fetch` copies an object to a local file and
  checks its sha256 against the recorded one (or the caller's), ChecksumMismatch otherwise.
- `local_path` serves callers that need a file on this machine (kdcore reads paths): a verified
  copy in a cache directory ({data_dir}/cache/artifacts), fetched once per key. Keys under
  `files/` and `jobs/{id}/attempt-{n}/` are written once, so a cached copy never goes stale;
  checkpoints, which are rewritten, are never read through it (the worker fetches them itself).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from jobs.artifact_store.base import CHUNK_BYTES, ChecksumMismatch, StoredObject, validate_key, write_verified
from jobs.errors import TooLarge

if TYPE_CHECKING:
    from jobs.settings import Settings

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's floor for every part but the last
SHA256_META = "sha256"  # x-amz-meta-sha256
UPLOADS = ".uploads"  # temporary keys of multipart uploads; the leading "." keeps them out of validate_key


class S3ArtifactStore:
    """Objects under `s3://{bucket}/{prefix}/`; see the module docstring."""

    def __init__(self, *, bucket: str, prefix: str, client, cache_dir: Path, part_bytes: int = 8 * 1024 * 1024):
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum part size)")
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.cache_dir, self.part_bytes = Path(cache_dir), part_bytes

    @classmethod
    def from_settings(cls, settings: "Settings") -> "S3ArtifactStore":
        bucket, prefix = settings.artifact_bucket_and_prefix
        secret = settings.s3_secret_access_key
        client = boto3.session.Session().client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=None if secret is None else secret.get_secret_value(),
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                          s3={"addressing_style": settings.s3_addressing_style}))
        return cls(bucket=bucket, prefix=prefix, client=client, cache_dir=settings.artifact_cache_path,
                   part_bytes=settings.s3_part_bytes)

    def _name(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- writing ----------------------------------------------------------------------------------
    def write_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int | None = None,
                     before_commit: Callable[[], None] | None = None) -> StoredObject:
        name = self._name(key)
        digest, size = hashlib.sha256(), 0
        buffer = bytearray()
        upload: _Multipart | None = None
        try:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(f"larger than the limit of {max_bytes} bytes", limit=max_bytes)
                digest.update(chunk)
                buffer += chunk
                while len(buffer) >= self.part_bytes:
                    if upload is None:
                        upload = _Multipart(self.client, self.bucket, self._temporary_name())
                    upload.add(bytes(buffer[: self.part_bytes]))
                    del buffer[: self.part_bytes]
            sha = digest.hexdigest()
            if upload is None:  # one part: a single PUT, metadata and all
                if before_commit is not None:
                    before_commit()
                self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer),
                                       Metadata={SHA256_META: sha})
                return StoredObject(key=key, bytes=size, sha256=sha)
            if buffer:
                upload.add(bytes(buffer))
            upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        try:  # the sha256 is known only now: copy to the key with it as metadata
            if before_commit is not None:
                before_commit()
            self.client.copy({"Bucket": self.bucket, "Key": upload.name}, self.bucket, name,
                             ExtraArgs={"Metadata": {SHA256_META: sha}, "MetadataDirective": "REPLACE"})
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=upload.name)
        return StoredObject(key=key, bytes=size, sha256=sha)

    def put_file(self, key: str, src_path: Path, *, before_commit: Callable[[], None] | None = None) -> StoredObject:
        with open(src_path, "rb") as src:
            return self.write_stream(key, iter(lambda: src.read(CHUNK_BYTES), b""), before_commit=before_commit)

    def _temporary_name(self) -> str:
        """`.uploads/{start time}-{random}`: its age is read from its name, whatever clock (or fake)
        the server's `Initiated` follows (remove_stale_temporaries)."""
        base = f"{self.prefix}/{UPLOADS}" if self.prefix else UPLOADS
        return f"{base}/{int(time.time())}-{uuid.uuid4().hex}"

    # --- reading ----------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        return self._get(key)["Body"]

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        # The request is sent now, so a missing object fails before the first byte is streamed.
        rng = None if start == 0 and end is None else f"bytes={start}-{'' if end is None else end}"
        body = self._get(key, Range=rng)["Body"]
        return _chunks(body)

    def stat(self, key: str) -> StoredObject:
        """Size and recorded sha256 (a HEAD request); FileNotFoundError if missing."""
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return StoredObject(key=key, bytes=head["ContentLength"], sha256=head.get("Metadata", {}).get(SHA256_META, ""))

    def fetch(self, key: str, dest: Path, *, sha256: str | None = None) -> Path:
        response = self._get(key)
        expected = sha256 or response.get("Metadata", {}).get(SHA256_META)
        if not expected:
            raise ChecksumMismatch(f"{key}: the object carries no sha256 to verify it against")
        return write_verified(dest, _chunks(response["Body"]), sha256=expected, what=key)

    def local_path(self, key: str) -> Path:
        path = self.cache_dir.joinpath(*validate_key(key).split("/"))
        if not path.is_file():
            self.fetch(key, path)
        return path

    def size(self, key: str) -> int:
        return self.stat(key).bytes

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))  # a missing key is fine in S3
        path = self.cache_dir.joinpath(*key.split("/"))
        path.unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        start = self._name(prefix) + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            keys += [item["Key"][cut:] for item in page.get("Contents", [])]
        return sorted(keys)

    def list_older_than(self, prefix: str, cutoff: float) -> list[str]:
        start = self._name(prefix) + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            keys += [item["Key"][cut:] for item in page.get("Contents", [])
                     if item["LastModified"].timestamp() < cutoff]  # an object's time is when it appeared
        return sorted(keys)

    def remove_stale_temporaries(self, cutoff: float) -> list[str]:
        """Multipart uploads under `.uploads/` begun before `cutoff` and never completed (their
        invisible parts are stored and billed until aborted), and temporary objects there (a process
        killed between completing an upload and copying it to its key)."""
        base = (f"{self.prefix}/{UPLOADS}" if self.prefix else UPLOADS) + "/"
        removed = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base):
            for upload in page.get("Uploads", []):
                if _started(upload["Key"], upload["Initiated"].timestamp()) < cutoff:
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed.append(f"upload:{upload['Key']}")
                    except ClientError:  # completed or aborted by its writer meanwhile
                        pass
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                if max(_started(item["Key"], 0.0), item["LastModified"].timestamp()) < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed.append(item["Key"])
        return removed

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def _get(self, key: str, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._name(key), **kwargs)
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise

    def _head(self, key: str):
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
                return None
            raise


class _Multipart:
    """One multipart upload to a temporary key; abort() leaves no part behind."""

    def __init__(self, client, bucket: str, name: str):
        self.client, self.bucket, self.name = client, bucket, name
        self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
        self.parts: list[dict] = []

    def add(self, data: bytes) -> None:
        number = len(self.parts) + 1
        etag = self.client.upload_part(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id,
                                       PartNumber=number, Body=data)["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})

    def complete(self) -> None:
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.name, UploadId=self.upload_id)
        except ClientError:  # already completed (the copy failed): the temporary object is deleted instead
            self.client.delete_object(Bucket=self.bucket, Key=self.name)


def _started(name: str, otherwise: float) -> float:
    """When the temporary `name` was begun, from its name (`_temporary_name`); `otherwise` for a
    name without one (written by an older version)."""
    stamp = name.rsplit("/", 1)[-1].split("-", 1)[0]
    return float(stamp) if "-" in name.rsplit("/", 1)[-1] and stamp.isdigit() else otherwise


def _chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
