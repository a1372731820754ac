"""Errors kdcore raises. Each carries the spec field or file it is about, so callers
(the CLI, the API's problem+json mapper) can name it without parsing messages."""

from __future__ import annotations


class KDError(Exception):
    """Base class. `field` is a dotted path into the job spec (e.g. "hyperparameters.alpha")
    or None when the error is not about one field."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SpecError(KDError):
    """A job spec or architecture parameters that cannot run. `errors`, when several fields fail
    at once (DistillSpec.validate), lists every (field, message), the first being this error's own."""

    def __init__(self, message: str, *, field: str | None = None,
                 errors: list[tuple[str | None, str]] | None = None):
        super().__init__(message, field=field)
        self.errors = list(errors) if errors else None


class FormatError(KDError):
    """A file whose format is refused (pickle, TorchScript, torch.export) or not recognised."""


class DataError(KDError):
    """A dataset file that fails validation (shapes, dtypes, non-finite values, labels)."""


class TeacherError(KDError):
    """A teacher that cannot be loaded or does not fit the data (keys, shapes, classes)."""


class CheckpointError(KDError):
    """A checkpoint that is missing, truncated or fails its checksum."""


class Stopped(Exception):
    """The caller's `should_stop()` said so (cancellation, a lost lease, a time limit): raised out of
    training at a step boundary and out of a running ONNX teacher (its process is killed). Not a
    KDError: nothing is wrong with the spec."""
