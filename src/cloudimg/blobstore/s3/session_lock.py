"""A resumable session's lock: an object, ``locks/<session>``, taken with conditions.

The object holds its owner and an expiry (``LOCK_TTL`` after it was taken or last
renewed: its holder renews it every few minutes while it writes parts). A second request
waits while it stands; an expired one (its holder crashed) is taken over with
``If-Match`` on its ETag, so two requests taking it over cannot both win; its holder
deletes it with ``If-Match`` on its own ETag, so a lock taken over is never deleted by
its old holder. SeaweedFS 4.48 honours both conditions (tested).

**A release the store misses.** Deleting the lock is the last thing a request does, and
the store may be away just then (an outage that also failed the request). The delete is
then retried on a thread of its own, with backoff, until it lands or the lock would have
expired anyway (and logged, so an operator sees why a client waited), and this process
remembers the lock as still its own: a request here that resumes the session meanwhile
(a client retrying on the same replica, the usual case) takes its own lock back at once
with ``If-Match`` instead of waiting out ``LOCK_TTL``. Another replica cannot know the
holder is done, so it waits until the retried delete lands or the lock expires.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time

from botocore.exceptions import ClientError

from cloudimg.blobstore.s3.client import (
    STORE_ERRORS,
    Bucket,
    code_of,
    is_missing,
    is_precondition,
)

__all__ = ["LOCK_TTL", "RELEASE_BACKOFF", "SessionLocks"]

log = logging.getLogger(__name__)

LOCK_TTL = 600.0
"""Seconds a session's lock holds without word from its holder, which renews it while
it writes: a crashed holder's lock is taken over after this."""
RELEASE_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds between retries of a release the store missed (the last repeats)."""


def lock_body(owner: str) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + LOCK_TTL}).encode()


class SessionLocks:
    """The session locks of one store, and the releases still owed to it."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.unreleased: dict[str, str] = {}
        """Lock key -> ETag of a lock this process let go but whose delete the store
        missed: still ours, retried by a thread, taken back by a lock() here."""
        self._guard = threading.Lock()

    def try_lock(self, key: str, owner: str) -> str | None:
        """Take the lock: its ETag, or None while another holds it (blocking)."""
        body = lock_body(owner)
        client = self.bucket.client
        try:
            return client.put_object(Bucket=self.bucket.name, Key=key, Body=body, IfNoneMatch="*")[
                "ETag"
            ]
        except ClientError as exc:
            if not is_precondition(exc):
                raise
        taken = self._take_back(key, body)
        if taken is not None:
            return taken
        try:
            held = client.get_object(Bucket=self.bucket.name, Key=key)
            expires = float(json.loads(held["Body"].read()).get("expires", 0))
        except ClientError as exc:
            if is_missing(exc):
                return None  # let go meanwhile: try again
            raise
        except (ValueError, AttributeError):
            expires = 0.0  # not a lock we wrote: take it
        if expires > time.time():
            return None
        return self._replace(key, held["ETag"], body)  # its holder is gone: take it over

    def _take_back(self, key: str, body: bytes) -> str | None:
        """Our own lock whose release the store missed: take it with its ETag."""
        with self._guard:
            etag = self.unreleased.pop(key, None)
        if etag is None:
            return None
        return self._replace(key, etag, body)

    def _replace(self, key: str, etag: str, body: bytes) -> str | None:
        """Write ``body`` over the lock if it still has ``etag``: its new ETag, or None
        when another request took it (or it was deleted) first."""
        try:
            return self.bucket.client.put_object(
                Bucket=self.bucket.name, Key=key, Body=body, IfMatch=etag
            )["ETag"]
        except ClientError as exc:
            if is_precondition(exc) or is_missing(exc):
                return None
            raise

    def renew(self, key: str, etag: str, owner: str) -> str | None:
        """Push our lock's expiry on (only if it is still ours): its new ETag, or None
        when it was taken over meanwhile (blocking)."""
        return self._replace(key, etag, lock_body(owner))

    def is_locked(self, key: str) -> bool:
        """Whether a request holds the lock ``key`` now (blocking)."""
        try:
            held = self.bucket.client.get_object(Bucket=self.bucket.name, Key=key)
            return float(json.loads(held["Body"].read()).get("expires", 0)) > time.time()
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        except (ValueError, AttributeError):
            return False

    # -- letting go ------------------------------------------------------------------

    def unlock(self, key: str, etag: str) -> None:
        """Delete our lock (only if it is still ours). On a thread when a loop runs, since
        ``release`` is synchronous; a delete the store misses is retried (module doc)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._release(key, etag)
            return
        # A waiting lock() polls, so it sees the lock gone as soon as the delete lands.
        loop.run_in_executor(None, self._release, key, etag)

    def _release(self, key: str, etag: str) -> None:
        if self._delete(key, etag):
            return
        with self._guard:
            self.unreleased[key] = etag
        deadline = time.time() + LOCK_TTL  # expired by then whatever happens
        threading.Thread(
            target=self._retry, args=(key, etag, deadline), name="s3-unlock", daemon=True
        ).start()

    def _retry(self, key: str, etag: str, deadline: float) -> None:
        for attempt in itertools.count():
            time.sleep(RELEASE_BACKOFF[min(attempt, len(RELEASE_BACKOFF) - 1)])
            with self._guard:
                if self.unreleased.get(key) != etag:
                    return  # taken back by a lock() here: that request lets it go
            released = self._delete(key, etag)
            if released or time.time() > deadline:
                break
        if released:
            log.info("released session lock %s once the object store answered", key)
        else:
            log.error("gave up releasing session lock %s: it expires by itself", key)
        with self._guard:
            if self.unreleased.get(key) == etag:
                del self.unreleased[key]

    def _delete(self, key: str, etag: str) -> bool:
        """Delete the lock if it is still ``etag``: False when the store failed (logged)."""
        try:
            self.bucket.client.delete_object(Bucket=self.bucket.name, Key=key, IfMatch=etag)
        except ClientError as exc:
            if is_precondition(exc) or is_missing(exc):
                return True  # expired and taken over, or gone: not ours to delete
            reason = code_of(exc)
        except STORE_ERRORS as exc:
            reason = type(exc).__name__
        else:
            return True
        log.warning("releasing session lock %s failed (%s); retrying", key, reason)
        return False
