"""Prometheus metrics and structured (JSON) logs carrying job and request ids."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "IMAGES_INGESTED",
    "JOBS_FINISHED",
    "JOBS_IN_QUEUE",
    "JOBS_SUBMITTED",
    "JOB_SECONDS",
    "configure_logging",
    "job_log_context",
]

HTTP_REQUESTS = Counter(
    "promptlabel_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "promptlabel_http_request_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JOBS_SUBMITTED = Counter("promptlabel_jobs_submitted_total", "Jobs created", ["kind"])
JOBS_FINISHED = Counter(
    "promptlabel_jobs_finished_total", "Jobs that ended, by final status", ["kind", "status"]
)
JOB_SECONDS = Histogram(
    "promptlabel_job_run_seconds",
    "Time a worker spent on one run of a job",
    ["kind"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
JOBS_IN_QUEUE = Gauge(
    "promptlabel_jobs",
    "Jobs by kind and status, read from the database at scrape time (all workers' jobs)",
    ["kind", "status"],
)
IMAGES_INGESTED = Counter(
    "promptlabel_images_ingested_total", "Images received, by outcome", ["source", "outcome"]
)

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "promptlabel_log_context", default=None
)


@contextmanager
def job_log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (job_id, request_id, ...) to every log record made inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            setattr(record, key, value)
        # uvicorn's copy of the message with terminal colour codes: noise in a JSON line.
        record.__dict__.pop("color_message", None)
        return True


def configure_logging(*, level: int = logging.INFO, json_format: bool = True) -> None:
    """Log to stderr, one JSON object per line (or plain text), with the context fields."""
    # Model-loading progress bars would interleave with the log lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if json_format:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Per-request access lines are in the metrics; uvicorn's own would double the log volume.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx logs every request at INFO: a line per VLM call and per fetched URL. Failures are
    # logged by the callers, with the job's id.
    logging.getLogger("httpx").setLevel(logging.WARNING)
