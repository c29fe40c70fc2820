"""Claims that make an exclusive S3 multipart upload exclusive on every server.

A ``CompleteMultipartUpload`` with ``If-None-Match: *`` is atomic on AWS, but
not on every S3 server: on SeaweedFS two writers completing at the same
instant both succeeded in 18 of 50 trials, the second replacing the first. A
conditional ``PutObject`` is atomic there (0 of 50). So an exclusive upload
completes while holding a *claim*: a small object
``.<name>.claim-<generation>.partial`` beside ``<name>``, created with a
conditional ``PutObject``; only one writer holds a generation, and a claim is
deleted once its upload completed or failed. A writer that finds a claim
waits until the object appears (it lost: :class:`ObjectExistsError`) or the
claim goes away (it claims again).

A claim left by a killed writer is never deleted by another writer (two
writers could then both delete and both claim): once a waiter has seen the
same claim for :data:`CLAIM_STALE` seconds, it claims the next generation
instead, which again only one writer can get. So saves stay exclusive as long
as a completion takes less than that: on the servers that need claims it is
one short metadata request (SeaweedFS); where it can take minutes (AWS, for
large objects) the conditional complete is atomic by itself. The claim's name
is a temp name of :mod:`.fs`: a prune removes what a killed writer left, as
it removes its other temp files.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fsspec.spec import AbstractFileSystem

from .errors import ObjectExistsError

__all__ = ["CLAIM_STALE", "claimed"]

logger = logging.getLogger(__name__)

CLAIM_STALE = 10.0
"""Seconds a waiter sees the same claim before it takes it for a dead writer's."""
_POLL = 0.2


def _claim_prefix(path: str) -> str:
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}.claim-"


def _generation(key: str, prefix: str) -> int | None:
    number = key[len(prefix):].removesuffix(".partial")
    return int(number) if number.isdigit() else None


def _claims(fs: AbstractFileSystem, path: str) -> dict[int, str]:
    """ETag of each claim of ``path`` by generation."""
    bucket, _, key_prefix = _claim_prefix(path).partition("/")
    listing = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key_prefix)
    found = {}
    for entry in listing.get("Contents", []):
        generation = _generation(entry["Key"], key_prefix)
        if generation is not None:
            found[generation] = entry["ETag"]
    return found


def _try_claim(fs: AbstractFileSystem, path: str, generation: int) -> bool:
    """Create claim ``generation`` of ``path`` unless it exists; whether this writer got it."""
    claim = f"{_claim_prefix(path)}{generation}.partial"
    bucket, _, key = claim.partition("/")
    token = uuid.uuid4().hex.encode()
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=token, IfNoneMatch="*")
    except OSError:
        # s3fs raises FileExistsError for a 412 that names its condition, and
        # OSError(EINVAL) for one that does not (SeaweedFS). The claim then
        # exists: another writer's, or this one's if the answer to a first
        # attempt was lost and the client retried.
        try:
            return fs.cat_file(claim) == token
        except FileNotFoundError:
            pass
        raise
    return True


def _acquire(fs: AbstractFileSystem, path: str) -> int:
    """Claim ``path``: the generation this writer holds. Uncontended, one
    request: the conditional complete that follows finds an existing object."""
    if _try_claim(fs, path, 0):
        return 0
    seen: tuple[int, str] | None = None
    seen_since = time.monotonic()
    while True:
        claims = _claims(fs, path)
        fs.invalidate_cache(path)
        if fs.exists(path):
            raise ObjectExistsError(f"{fs.unstrip_protocol(path)}: already exists")
        generation = 0
        if claims:
            newest = max(claims)
            if (newest, claims[newest]) != seen:
                seen, seen_since = (newest, claims[newest]), time.monotonic()
            if time.monotonic() - seen_since < CLAIM_STALE:
                time.sleep(_POLL)
                continue
            generation = newest + 1
        if _try_claim(fs, path, generation):
            return generation


def _release(fs: AbstractFileSystem, path: str, generation: int) -> None:
    """Delete claim ``generation`` of ``path`` and the older ones (dead writers').

    A claim that cannot be deleted is left: the upload's outcome stands, and
    waiters take the claim for a dead writer's after :data:`CLAIM_STALE`.
    """
    prefix = _claim_prefix(path)
    bucket, _, key_prefix = prefix.partition("/")
    claims = [{"Key": f"{key_prefix}{g}.partial"} for g in range(generation + 1)]
    try:
        fs.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": claims, "Quiet": True})
    except Exception as exc:  # the upload's own outcome is the one to report
        logger.warning("%s: could not delete the claim: %s", fs.unstrip_protocol(prefix), exc)


@contextmanager
def claimed(fs: AbstractFileSystem, path: str) -> Iterator[None]:
    """Hold a claim on ``path`` for the block (the completion of its upload).

    Raises :class:`ObjectExistsError` if ``path`` exists or another writer's
    claimed upload of it completes meanwhile.
    """
    generation = _acquire(fs, path)
    try:
        yield
    finally:
        _release(fs, path, generation)
