"""Read-model writers: a domain declares each table as a ReadModel; rows go in with one statement per batch."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from psycopg import AsyncCursor, sql


@dataclass(frozen=True, slots=True)
class ReadModel:
    """One read-model table built from a domain's states, keyed by its first column.

    A state gives one row (`row`) or several (`rows`: e.g. one per queued message). Rows are upserted, never
    deleted: a row a state stops producing keeps its last value, in the projector and in replay alike, so an
    item may leave a state only after its final row was written (keep terminal items a while before pruning).
    """

    table: str
    # (column, PostgreSQL type) in row order; `row` produces exactly these tuples.
    columns: tuple[tuple[str, str], ...]
    # state -> row; None for a table whose rows are not built from states (the events archive).
    row: Callable[[Any], tuple] | None = None
    # state -> rows, for a table with several rows per state (use `row` or `rows`, not both).
    rows: Callable[[Any], Iterable[tuple]] | None = None
    # Upsert keeps the last row per key (the newest state); otherwise the first one written wins.
    upsert: bool = True
    # A table derived from the events archive rather than from states (a search index): derive(cursor, schema,
    # event ids) fills it for those archived events, or with None for every archived event it lacks. The projector
    # calls it after each batch's transaction (and once at start), replay after rebuilding the archive.
    derive: Callable[[AsyncCursor, str, Sequence[uuid.UUID] | None], Awaitable[int]] | None = None

    def rows_of(self, state: Any) -> Iterable[tuple]:
        """The rows one state gives this table."""
        if self.rows is not None:
            return self.rows(state)
        return () if self.row is None else (self.row(state),)

    @property
    def key(self) -> str:
        return self.columns[0][0]


def first_per_key(rows: Iterable[tuple]) -> list[tuple]:
    """Rows deduplicated on their first column, the first occurrence kept (the log's earliest copy)."""
    unique: dict[object, tuple] = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return list(unique.values())


def last_per_key(rows: Iterable[tuple]) -> list[tuple]:
    """Rows coalesced on their first column, the last occurrence kept (the newest state)."""
    return list({row[0]: row for row in rows}.values())


async def write_rows(cur: AsyncCursor, model: ReadModel, rows: Sequence[tuple], schema: str = "public") -> int:
    """Insert (or upsert) rows in one statement; returns the rows inserted or changed."""
    unique = last_per_key(rows) if model.upsert else first_per_key(rows)
    if not unique:
        return 0
    await cur.execute(_insert_sql(schema, model.table, model.columns, model.upsert), [list(c) for c in zip(*unique)])
    return cur.rowcount


@cache
def _insert_sql(schema: str, table: str, columns: tuple[tuple[str, str], ...], upsert: bool) -> sql.Composed:
    """INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT on the first column."""
    names = [sql.Identifier(name) for name, _ in columns]
    arrays = sql.SQL(", ").join(sql.SQL("%b::{}[]").format(sql.SQL(kind)) for _, kind in columns)
    statement = sql.SQL("INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT ({key}) ").format(
        table=sql.Identifier(schema, table), names=sql.SQL(", ").join(names), arrays=arrays, key=names[0],
    )
    if not upsert:
        return statement + sql.SQL("DO NOTHING")
    target = sql.Identifier(table)
    rest = names[1:]
    return statement + sql.SQL(
        "DO UPDATE SET ({rest}) = ROW({excluded}), projected_at = now() WHERE ({current}) IS DISTINCT FROM ({excluded})"
    ).format(
        rest=sql.SQL(", ").join(rest),
        excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(n) for n in rest),
        current=sql.SQL(", ").join(sql.SQL("{}.{}").format(target, n) for n in rest),
    )
