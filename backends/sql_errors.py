"""What a database says about a caller's SQL, told as a short message and a code.

The drivers' own text (``Binder Error: … Candidate bindings: …``, ``LINE 1: …``, hints,
internal names) never reaches a client. A caller gets the kind of mistake and, when the
database names one, the column, table or function — only if that name appears in the
SQL the caller sent, so nothing the caller did not write is echoed back.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.errors import BadRequest

__all__ = ["KINDS", "caller_error"]

KINDS: Final = {
    "sql_syntax_error": "the database could not parse the SQL",
    "column_not_found": "column not found",
    "table_not_found": "table not found",
    "function_not_found": "no function matches that name and those argument types",
    "ambiguous_column": "a column reference is ambiguous",
    "type_mismatch": "the types in an expression do not match",
    "grouping_error": "a column must appear in GROUP BY or be used in an aggregate",
    "invalid_value": "a value is not valid for its type",
    "division_by_zero": "division by zero",
    "permission_denied": "the database refused access",
    "read_only": "only reads are allowed",
    "not_supported": "the database does not support this",
    "query_error": "the database refused the query",
}
_QUOTED: Final = re.compile(r'"([^"]{1,128})"')


def caller_error(code: str, driver_text: str, sql: str) -> BadRequest:
    """A 400 for a mistake in the caller's SQL or values: `code` and a short message."""
    message = KINDS[code]
    if code in ("column_not_found", "table_not_found", "function_not_found", "ambiguous_column"):
        for name in _QUOTED.findall(driver_text):
            if name and name in sql:
                message = f"{message}: {name}"
                break
    return BadRequest(message, code=code, param="sql")
