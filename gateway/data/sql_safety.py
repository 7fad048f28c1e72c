"""Is this SQL one read-only statement? Parsed with sqlglot in the backend's dialect,
never matched with regular expressions, and rewritten from the parsed tree (comments
dropped, row limit pushed in), so what runs is exactly what was checked.

The deny list of functions and constructs lives here, in one place.

Depth: sqlglot's parser recurses about twenty Python frames per level of nesting, so a
statement is first scanned token by token (in a loop) and refused with a 400 when it nests
deeper than ``max_depth`` levels (parentheses, brackets, CASE blocks and runs of unary
operators such as ``NOT NOT …`` or ``- - …``; default 32, ``backends.*.max_sql_depth``).
Long flat input — a thousand ``OR`` terms, an ``IN`` list of thousands — is not nesting and
is parsed in loops. A RecursionError that still escapes sqlglot is a 400 too, never a 500.
"""

from __future__ import annotations

import logging
from typing import Final

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.errors import ParseError, TokenError

from gateway.errors import BadRequest, ResponseTooLarge

# sqlglot warns about statements it parses as raw commands; those are refused anyway.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

__all__ = [
    "DEFAULT_MAX_DEPTH", "DENIED_FUNCTIONS", "TOO_LARGE_SENTINEL", "ReadOnlySQL",
    "bound_row_size", "check_read_only", "limit_rows",
]  # fmt: skip

DEFAULT_MAX_DEPTH: Final = 32
_OPENING: Final = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE,
                             TokenType.CASE})  # fmt: skip
_CLOSING: Final = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE,
                             TokenType.END})  # fmt: skip
_UNARY: Final = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS, TokenType.TILDE})

# Functions that read or write files, call out of the database, change state or
# settings, or run SQL from a string. Names are lower case, compared without schema.
DENIED_FUNCTIONS: Final = frozenset(
    {
        # Postgres: server files, large objects, other servers, settings, processes
        "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_ls_logdir",
        "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "lo_import", "lo_export",
        "lo_from_bytea", "lo_put", "lo_create", "lo_unlink", "lo_open", "lo_write",
        "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_send_query",
        "dblink_open", "dblink_fetch", "set_config", "pg_reload_conf", "pg_rotate_logfile",
        "pg_terminate_backend", "pg_cancel_backend", "pg_promote", "pg_switch_wal",
        "pg_create_restore_point", "pg_advisory_lock", "pg_advisory_xact_lock",
        "pg_try_advisory_lock", "pg_notify", "nextval", "setval", "txid_current",
        "query_to_xml", "query_to_xml_and_xmlschema", "query_to_json", "cursor_to_xml",
        "table_to_xml", "database_to_xml", "schema_to_xml", "pg_import_system_collations",
        "pg_logical_emit_message", "pg_file_write", "pg_file_rename", "pg_file_unlink",
        "pg_execute_server_program",
        # DuckDB: files, the network, extensions, settings
        "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json",
        "read_json_auto", "read_json_objects", "read_ndjson", "read_ndjson_auto",
        "read_ndjson_objects", "read_text", "read_blob", "glob", "sniff_csv", "parquet_metadata",
        "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "iceberg_scan",
        "delta_scan", "read_xlsx", "st_read", "sqlite_scan", "sqlite_attach", "postgres_scan",
        "postgres_attach", "postgres_query", "mysql_scan", "mysql_query", "httpfs",
        "install_extension", "load_extension", "current_setting_set", "duckdb_secrets",
        "query", "query_table", "getenv",
    }
)  # fmt: skip

# Statements and clauses that are not a plain read.
_DENIED_NODES: Final = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
    exp.Copy, exp.Command, exp.Set, exp.Pragma, exp.Into, exp.Lock, exp.Use,
    exp.Transaction, exp.Commit, exp.Rollback, exp.LoadData, exp.Attach, exp.Detach,
    exp.Install, exp.Grant, exp.Revoke, exp.TruncateTable, exp.Analyze, exp.Cache,
)  # fmt: skip
_ROOTS: Final = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)


class ReadOnlySQL:
    """A checked statement: its tree and the dialect it was checked in."""

    __slots__ = ("dialect", "tree")

    def __init__(self, tree: exp.Expression, dialect: str) -> None:
        self.tree = tree
        self.dialect = dialect

    def sql(self) -> str:
        try:
            return self.tree.sql(dialect=self.dialect, comments=False)
        except RecursionError:
            raise _too_deep(DEFAULT_MAX_DEPTH) from None


def nesting(sql: str, dialect: str) -> int:
    """How deeply `sql` nests, counted over its tokens in one loop (no recursion)."""
    depth = deepest = run = 0
    for token in sqlglot.tokenize(sql, read=dialect):
        kind = token.token_type
        if kind in _OPENING:
            depth += 1
        elif kind in _CLOSING:
            depth = max(0, depth - 1)
        run = run + 1 if kind in _UNARY else 0
        deepest = max(deepest, depth + run)
    return deepest


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        f"the SQL nests more than {max_depth} levels deep (parentheses, CASE, NOT or minus); "
        "write it flatter",
        code="sql_too_deep",
        param="sql",
    )


def check_read_only(
    sql: str,
    dialect: str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_value_bytes: int | None = None,
) -> ReadOnlySQL:
    """The one read-only statement in `sql`, or `BadRequest` saying why not."""
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest("'sql' must be a non-empty string", param="sql")
    try:
        if nesting(sql, dialect) > max_depth:
            raise _too_deep(max_depth)
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (ParseError, TokenError) as exc:
        raise BadRequest(f"the SQL could not be parsed: {_first_line(exc)}", param="sql") from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    if len(statements) != 1:
        raise BadRequest("exactly one SQL statement is allowed", code="sql_refused", param="sql")
    tree = statements[0]
    if not isinstance(tree, _ROOTS):
        raise _refused(f"only read-only queries are allowed, not {_kind(tree)}")
    for node in tree.walk():
        if isinstance(node, _DENIED_NODES):
            raise _refused(f"{_kind(node)} is not allowed in a read-only query")
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if name in DENIED_FUNCTIONS:
                raise _refused(f"the function {name}() is not allowed")
        if isinstance(node, exp.Table) and _looks_like_a_path(node):
            raise _refused("reading files is not allowed")
        if max_value_bytes is not None and _built_size(node) > max_value_bytes:
            raise ResponseTooLarge(
                f"the SQL builds a value larger than {max_value_bytes} bytes (max_response_bytes)"
            )
    return ReadOnlySQL(tree, dialect)


TOO_LARGE_SENTINEL: Final = "tollway:response_too_large"


def bound_row_size(query: ReadOnlySQL, max_bytes: int) -> ReadOnlySQL:
    """Postgres only: `query` failing on the server, before a row is sent, when a row's
    text would pass `max_bytes` — a huge value is built in the database's memory and
    never reaches Tollway's. The failure is a cast of `TOO_LARGE_SENTINEL` to an integer,
    which the Postgres backend reads as `ResponseTooLarge`."""
    alias = exp.to_identifier("tollway_r")
    row_text = exp.Cast(this=exp.column(alias), to=exp.DataType.build("text"))
    size = exp.Anonymous(this="octet_length", expressions=[row_text])
    # The cast must depend on the row: Postgres folds a constant one while planning.
    text = exp.Case(
        ifs=[
            exp.If(
                this=exp.GT(this=size, expression=exp.Literal.number(max_bytes)),
                true=exp.Literal.string(TOO_LARGE_SENTINEL),
            )
        ],
        default=exp.Literal.string("1"),
    )
    check = exp.Cast(this=text, to=exp.DataType.build("int"))
    inner = exp.Subquery(this=query.tree.copy(), alias=exp.TableAlias(this=alias))
    outer = (
        exp.select(exp.Column(this=exp.Star(), table=alias.copy()))
        .from_(inner, copy=False)
        .where(exp.EQ(this=check, expression=exp.Literal.number(1)), copy=False)
    )
    return ReadOnlySQL(outer, query.dialect)


def _built_size(node: exp.Expr) -> int:
    """The size of a string a generator builds from constants (repeat, lpad, rpad, space),
    or 0 when it is not known before running."""
    if isinstance(node, exp.Repeat):
        times = _constant(node.args.get("times"))
        text = node.this
        unit = len(text.this) if isinstance(text, exp.Literal) and text.is_string else 1
        return int(times * unit) if times is not None else 0
    if isinstance(node, exp.Pad):
        length = _constant(node.expression)
        return int(length) if length is not None else 0
    if isinstance(node, exp.Space):
        count = _constant(node.this)
        return int(count) if count is not None else 0
    return 0


def _constant(node: exp.Expr | None, depth: int = 0) -> float | None:
    """A number written with constants and + - * /, or None."""
    if node is None or depth > 8:
        return None
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return float(node.this)
        except ValueError:
            return None
    if isinstance(node, exp.Paren | exp.Cast):
        return _constant(node.this, depth + 1)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = _constant(node.this, depth + 1), _constant(node.expression, depth + 1)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Add):
            return left + right
        if isinstance(node, exp.Sub):
            return left - right
        if isinstance(node, exp.Mul):
            return left * right
        return left / right if right else None
    return None


def limit_rows(query: ReadOnlySQL, rows: int) -> ReadOnlySQL:
    """`query` returning at most `rows` rows: its own LIMIT lowered, or it wrapped."""
    tree = query.tree
    if isinstance(tree, exp.Select) and not tree.args.get("offset"):
        current = tree.args.get("limit")
        limit_value = current.expression if current is not None else None
        if current is None or (isinstance(limit_value, exp.Literal) and limit_value.is_int):
            existing = int(limit_value.this) if limit_value is not None else rows
            return ReadOnlySQL(tree.copy().limit(min(existing, rows)), query.dialect)
    inner = exp.Subquery(
        this=tree.copy(), alias=exp.TableAlias(this=exp.to_identifier("tollway_q"))
    )
    wrapped = exp.select("*").from_(inner).limit(rows)
    return ReadOnlySQL(wrapped, query.dialect)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _looks_like_a_path(table: exp.Table) -> bool:
    name = table.name
    return "/" in name or "\\" in name or "://" in name or name.startswith("~")


def _kind(node: exp.Expr) -> str:
    key = node.key.upper()
    return {"COMMAND": "this command", "INTO": "SELECT INTO", "LOCK": "FOR UPDATE/SHARE"}.get(
        key, key
    )


def _refused(message: str) -> BadRequest:
    return BadRequest(message, code="sql_refused", param="sql")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
