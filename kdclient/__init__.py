"""A Python client (`kdclient.Client`) and a command line (`kd`, see kdclient.cli) for the distillation
service's HTTP API. The client needs only httpx; the command line adds typer and rich."""

from kdclient.client import DEFAULT_URL, Client
from kdclient.errors import ApiError, FieldError, IntegrityError, KDClientError, ServiceUnreachable, WaitTimeout
from kdclient.models import TERMINAL_STATUSES, Event, File, Job, JobError, Metric, Page, Progress

__all__ = ["Client", "DEFAULT_URL", "ApiError", "FieldError", "IntegrityError", "KDClientError",
           "ServiceUnreachable", "WaitTimeout", "Event", "File", "Job", "JobError", "Metric", "Page",
           "Progress", "TERMINAL_STATUSES"]
