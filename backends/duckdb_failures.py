"""How a DuckDB query failed, told in a form that crosses a process boundary.

The engine (in-process or in the worker) sorts a DuckDB exception into a `Failure`: plain
strings, so a worker can send it back as it is. `error_of` turns one into the exception
the gateway answers with. This module never imports DuckDB: an isolated gateway uses it
without loading the library.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from backends.sql_errors import caller_error
from gateway.errors import (
    BackendOutOfMemory,
    BackendTimeout,
    BackendUnavailable,
    TollwayError,
)

__all__ = ["Failure", "FailureKind", "error_of"]

FailureKind = Literal["caller", "interrupted", "out_of_memory", "failed"]


class Failure(NamedTuple):
    kind: FailureKind
    code: str
    """For ``caller``: the `backends.sql_errors.KINDS` key; otherwise DuckDB's class name."""
    text: str = ""
    """For ``caller``: DuckDB's own message, read only for names the caller wrote."""


def error_of(failure: Failure, sql: str, backend: str) -> TollwayError:
    """The exception a caller gets for `failure` of `sql` on `backend`."""
    if failure.kind == "caller":
        return caller_error(failure.code, failure.text, sql)
    if failure.kind == "interrupted":
        return BackendTimeout("the query was interrupted", backend=backend)
    if failure.kind == "out_of_memory":
        return BackendOutOfMemory(
            f"backend {backend!r} ran out of memory for this query", backend=backend
        )
    return BackendUnavailable(f"backend {backend!r} failed: {failure.code}", backend=backend)
