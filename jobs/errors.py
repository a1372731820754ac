"""Domain errors raised by the repositories, the state machine and the artifact store.
The API maps them to HTTP statuses in one exception handler (NotFound 404, Conflict 409,
TooLarge 413, TooManyPending 429); the worker treats LeaseLost as "stop at once, someone else owns the job"."""

from __future__ import annotations


class JobsError(Exception):
    """Base class; `message` is safe to show to the tenant."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(JobsError):
    """No such row for this tenant (another tenant's row is reported the same way)."""


class Conflict(JobsError):
    """The request contradicts the row's current state (e.g. cancelling a finished job)."""


class FileInUse(Conflict):
    """A file cannot be deleted while a queued or running job's spec references it."""


class LeaseLost(JobsError):
    """A fenced write changed nothing: the job was re-claimed by a newer attempt or finished."""


class TooLarge(JobsError):
    """An upload or artifact went past its size cap; nothing was kept."""

    def __init__(self, message: str, *, limit: int):
        super().__init__(message)
        self.limit = limit


class TooManyPending(JobsError):
    """A ping or redelivery while `limit` of the webhook's deliveries already wait to be sent."""

    RETRY_AFTER_SECONDS = 30  # a hint: pending deliveries leave as they are sent or give up

    def __init__(self, pending: int, limit: int):
        super().__init__(f"this webhook already has {pending} deliveries waiting to be sent, the limit for a ping or "
                         f"a redelivery is {limit} (KD_WEBHOOK_PENDING_LIMIT); try again once some are sent")
        self.pending, self.limit = pending, limit
