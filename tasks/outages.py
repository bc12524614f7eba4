"""Which failures are outages: a service or the machine, not the request, is at fault, so the request must wait
(pending, with the reason) and the batch stop, rather than fail the request and go on out of order.

An outage is an error whose chain (`__cause__`, `__context__`) holds an OS-level error (connection refused or
reset, timeout, disk full, read-only file system), a database that cannot be reached or stays locked, or
botocore's connection errors (S3 through boto3 or DVC). Everything else — bad input, a diverged training, a
missing concept — is the request's own failure.
"""

from __future__ import annotations

import sqlite3

from lethe.tasks.settings import redacted

CONFIGURATION = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)  # not passing


class ServiceUnavailable(RuntimeError):
    """A store Lethe needs did not answer after its retries; the message names it and says what to do."""


def _outage_types() -> tuple[type, ...]:
    types: list[type] = [OSError, sqlite3.OperationalError, ServiceUnavailable]
    try:
        import psycopg

        types.append(psycopg.OperationalError)
    except ImportError:  # the PostgreSQL driver is only needed for a shared queue
        pass
    try:
        from dvc.exceptions import DownloadError, UploadError  # DVC's remote transfers, after its own retries

        types += [DownloadError, UploadError]
    except ImportError:
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        types += [BotoConnectionError, ConnectTimeoutError, ReadTimeoutError]
    except ImportError:
        pass
    return tuple(types)


def chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def outages_in(error: BaseException) -> list[BaseException]:
    """The chain's outage errors, outermost first; a wrong path or a permission is configuration, not one."""
    types = _outage_types()
    return [e for e in chain(error) if isinstance(e, types) and not isinstance(e, CONFIGURATION)]


def is_outage(error: BaseException) -> bool:
    return not isinstance(error, CONFIGURATION) and bool(outages_in(error))


def outage_reason(error: BaseException) -> str:
    """One line naming the deepest outage error of the chain (no traceback, no URL credentials)."""
    found = outages_in(error) or [error]
    deepest = found[-1]
    text = " ".join(str(deepest).split())[:300]
    return redacted(f"{type(deepest).__name__}: {text}")
