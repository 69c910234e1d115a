"""Replay: fold the log again into a shadow schema with the live DDL and writers, and diff it against live."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiokafka import TopicPartition
from psycopg import AsyncConnection, sql
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agents.batching import BadRecord, Record, envelope_of, fold_batch
from projections import ProjectionError
from projections.archive import EVENTS, event_row, write_events
from projections.migrations import apply_migrations
from projections.projector import (
    assigned_consumer,
    derive,
    derived_models,
    is_record_fault,
    load_offsets,
    state_changelogs,
)
from projections.readmodel import ReadModel, write_rows
from streams.policies import PolicyReader
from streams.registry import domain_of_topic, load_domains, migration_sources
from streams.settings import Settings
from streams.topics import log_end_offsets, misplaced, topic_partitions

LIVE_SCHEMA = "public"
SHADOW_SCHEMA = "replay_shadow"
WRITE_CHUNK = 5000
STALL_S = 30.0
# Tables diffed: the events archive and every domain's read models. projector_offsets and schema_migrations
# record how far a process got, not what the log says, so they are not read models and are not compared.
# The only columns a faithful rebuild may change: wall-clock time of the write. Everything else, including
# events.topic/partition/offset (the earliest copy of a redelivered event wins in both), must be equal.
IGNORED_COLUMNS = frozenset({"projected_at"})

Progress = Callable[[int, int], object]
MismatchKind = Literal["missing_in_live", "missing_in_shadow", "differs"]


class ReplayError(ProjectionError):
    """Replay could not read the log or build the shadow schema."""


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One key whose rows disagree, and for `differs` the columns that do."""

    key: str
    kind: MismatchKind
    columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TableDiff:
    """Shadow versus live for one table."""

    table: str
    compared: int
    missing_in_live: int
    missing_in_shadow: int
    differing: int
    samples: tuple[Mismatch, ...]

    @property
    def mismatches(self) -> int:
        return self.missing_in_live + self.missing_in_shadow + self.differing

    @property
    def clean(self) -> bool:
        return self.mismatches == 0


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What replay read and rebuilt, and with verify, how the rebuild compares with live."""

    schema: str
    records: int
    events: int
    rows: dict[str, int]
    not_archived: int
    not_folded: int
    verified: bool
    not_written: int = 0
    live_lag: int | None = None
    tables: tuple[TableDiff, ...] = ()

    @property
    def clean(self) -> bool:
        return all(table.clean for table in self.tables)

    @property
    def exit_code(self) -> int:
        return 0 if self.clean else 1

    def render(self) -> RenderableType:
        """A rich rendering for the CLI."""
        rebuilt = "".join(f", {count} {table} rows" for table, count in self.rows.items())
        summary = Text(
            f"Replayed {self.records} records into schema {self.schema}: {self.events} events{rebuilt} "
            f"({self.not_archived} records not archived, {self.not_folded} not folded, {self.not_written} rows"
            " PostgreSQL refused; all are in the dead-letter topic)."
        )
        if not self.verified:
            return summary
        table = Table("table", "compared", "missing in live", "missing in shadow", "differing", title="replay --verify")
        for diff in self.tables:
            table.add_row(diff.table, str(diff.compared), str(diff.missing_in_live), str(diff.missing_in_shadow),
                          str(diff.differing), style=None if diff.clean else "red")
        lines: list[RenderableType] = [summary, table]
        if self.live_lag:
            lines.append(Text(f"The live projector had {self.live_lag} records left to consume; "
                              "mismatches may only be lag.", style="yellow"))
        for diff in self.tables:
            lines.extend(Text(f"{diff.table} {m.kind} {m.key} {', '.join(m.columns)}".rstrip(), style="red")
                         for m in diff.samples)
        lines.append(Text("Live read models equal the rebuild." if self.clean else "Live read models differ.",
                          style="green" if self.clean else "bold red"))
        return Group(*lines)


@dataclass
class _Rebuild:
    records: int = 0
    events: dict[uuid.UUID, tuple] = field(default_factory=dict)
    # read model -> key -> row; the last row per key wins, as in the projector's upsert
    rows: dict[ReadModel, dict[object, tuple]] = field(default_factory=dict)
    not_archived: int = 0
    not_folded: int = 0
    not_written: int = 0  # rows PostgreSQL refused (the live projector dead-letters their records)


async def replay(
    settings: Settings, verify: bool = False, progress: Progress | None = None, *,
    schema: str = SHADOW_SCHEMA, sample: int = 20,
) -> ReplayReport:
    """Rebuild every read model from the log into `schema` (dropped first); with verify, diff it against live."""
    if schema == LIVE_SCHEMA:
        raise ReplayError("replay never writes into the live schema")
    rebuild, lag_ends = await _read_log(settings, progress)
    async with await AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await _write_shadow(conn, settings, schema, rebuild)
        tables: tuple[TableDiff, ...] = ()
        lag = None
        if verify:
            await apply_migrations(conn, LIVE_SCHEMA, migration_sources(settings))
            stored = await load_offsets(conn)
            lag = sum(max(0, end - stored.get((tp.topic, tp.partition), 0)) for tp, end in lag_ends.items())
            tables = tuple([await diff_table(conn, name, key, schema, sample=sample)
                            for name, key in compared_tables(settings)])
    return ReplayReport(
        schema=schema, records=rebuild.records, events=len(rebuild.events),
        rows={model.table: len(rows) for model, rows in rebuild.rows.items()},
        not_archived=rebuild.not_archived, not_folded=rebuild.not_folded, not_written=rebuild.not_written,
        verified=verify, live_lag=lag,
        tables=tables,
    )


def compared_tables(settings: Settings) -> list[tuple[str, str]]:
    """(table, key) of every table `replay --verify` diffs: the events archive, then each domain's read models."""
    return [(EVENTS.table, EVENTS.key)] + [
        (model.table, model.key) for domain in load_domains(settings) for model in domain.read_models
    ]


async def _read_log(settings: Settings, progress: Progress | None) -> tuple[_Rebuild, dict[TopicPartition, int]]:
    """Fold and archive every domain record up to the end offsets seen at start."""
    domains = domain_of_topic(settings)
    consumer = await assigned_consumer(settings, list(domains), f"{settings.app_id}-replay")
    try:
        tps = sorted(consumer.assignment())
        partitions = Counter(tp.topic for tp in tps)  # the topics' own counts: replay may run with other settings
        changelog_tps = await topic_partitions(consumer, list(state_changelogs(settings)))
        starts = await consumer.beginning_offsets(tps)
        ends = await log_end_offsets(settings, tps + changelog_tps)
        # Read after the ends: every policy a record up to them is stamped with was adopted before it.
        policies = PolicyReader(settings)
        try:
            book = await policies.refresh()
        finally:
            await policies.stop()
        folders = {topic: domain.folder_under(settings, book) for topic, domain in domains.items()}
        await consumer.seek_to_beginning(*tps)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        rebuild = _Rebuild()
        states: dict[str, object] = {}
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        if progress:
            progress(0, total)
        last_progress = time.monotonic()
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
            for tp, records in batch.items():
                # A record on a partition its key does not belong to is read where the worker forwarded it.
                kept = [r for r in records if r.offset < ends[tp] and not misplaced(r, partitions[tp.topic])]
                _archive(rebuild, tp, kept)
                result = fold_batch([Record(tp.topic, tp.partition, r.offset, r.key, r.value) for r in kept],
                                    states.get, folders[tp.topic])
                for key, state in result.writes:
                    states[key] = state
                    for model, row in domains[tp.topic].rows_of(state):
                        rebuild.rows.setdefault(model, {})[row[0]] = row
                rebuild.not_folded += len(result.dead)
                rebuild.records += len(kept)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if batch:
                last_progress = time.monotonic()
                if progress:
                    progress(rebuild.records, total)
            elif time.monotonic() - last_progress > STALL_S:
                raise ReplayError(f"no records for {STALL_S:.0f} s before the end offsets of {sorted(pending)}")
        return rebuild, {tp: ends[tp] for tp in [*tps, *changelog_tps]}
    finally:
        await consumer.stop()


def _archive(rebuild: _Rebuild, tp: TopicPartition, records: Sequence) -> None:
    for record in records:
        try:
            row = event_row(envelope_of(record), tp.topic, tp.partition, record.offset)
        except BadRecord:
            rebuild.not_archived += 1
            continue
        rebuild.events.setdefault(row[0], row)


async def _write_shadow(conn: AsyncConnection, settings: Settings, schema: str, rebuild: _Rebuild) -> None:
    """Drop and recreate the shadow schema with the live migrations and writers, in one transaction."""
    async with conn.transaction():
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        await apply_migrations(conn, schema, migration_sources(settings))
        async with conn.cursor() as cur:
            for chunk in _chunks(list(rebuild.events.values())):
                rebuild.not_written += await _write_refusing(conn, lambda rows: write_events(cur, rows, schema), chunk)
            for model, rows in rebuild.rows.items():
                for chunk in _chunks(list(rows.values())):
                    rebuild.not_written += await _write_refusing(
                        conn, lambda rows, model=model: write_rows(cur, model, rows, schema), chunk)
        # The tables derived from the archive (search), from the rebuilt archive, as the projector derives them.
        await derive(conn, derived_models(settings), None, schema)


async def _write_refusing(conn: AsyncConnection, write: Callable[[list[tuple]], Awaitable[object]],
                          rows: list[tuple]) -> int:
    """Write rows inside a savepoint; where PostgreSQL refuses a value, halve until each refused row stands alone
    and leave it out, as the projector dead-letters its record. Returns how many rows were left out."""
    try:
        async with conn.transaction():
            await write(rows)
        return 0
    except Exception as exc:
        if not is_record_fault(exc):
            raise
        if len(rows) == 1:
            return 1
        half = len(rows) // 2
        return await _write_refusing(conn, write, rows[:half]) + await _write_refusing(conn, write, rows[half:])


async def diff_table(
    conn: AsyncConnection, table: str, key: str, shadow: str, live: str = LIVE_SCHEMA, sample: int = 20
) -> TableDiff:
    """Compare one table of two schemas on every column but IGNORED_COLUMNS."""
    columns = await _columns(conn, live, table)
    if columns != await _columns(conn, shadow, table):
        raise ReplayError(f"{live}.{table} and {shadow}.{table} have different columns")
    compared = [c for c in columns if c != key and c not in IGNORED_COLUMNS]
    k = sql.Identifier(key)
    diff = sql.SQL(
        "SELECT coalesce(l.{k}, s.{k})::text AS key,"
        " CASE WHEN l.{k} IS NULL THEN 'missing_in_live' WHEN s.{k} IS NULL THEN 'missing_in_shadow'"
        " WHEN ROW({lc}) IS DISTINCT FROM ROW({sc}) THEN 'differs' ELSE 'same' END AS kind,"
        " array_remove(ARRAY[{changed}]::text[], NULL) AS columns"
        " FROM {live} l FULL JOIN {shadow} s ON l.{k} = s.{k}"
    ).format(
        k=k,
        lc=sql.SQL(", ").join(sql.SQL("l.{}").format(sql.Identifier(c)) for c in compared),
        sc=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in compared),
        changed=sql.SQL(", ").join(
            sql.SQL("CASE WHEN l.{c} IS DISTINCT FROM s.{c} AND l.{k} = s.{k} THEN {name} END").format(
                c=sql.Identifier(c), k=k, name=sql.Literal(c))
            for c in compared
        ),
        live=sql.Identifier(live, table), shadow=sql.Identifier(shadow, table),
    )
    cur = await conn.execute(sql.SQL("SELECT kind, count(*) FROM ({}) d GROUP BY kind").format(diff))
    counts = dict(await cur.fetchall())
    cur = await conn.execute(
        sql.SQL("SELECT key, kind, columns FROM ({}) d WHERE kind <> 'same' ORDER BY kind, key LIMIT %s").format(diff),
        (sample,),
    )
    samples = tuple(Mismatch(key, kind, tuple(cols)) for key, kind, cols in await cur.fetchall())
    return TableDiff(
        table=table, compared=sum(counts.values()), missing_in_live=counts.get("missing_in_live", 0),
        missing_in_shadow=counts.get("missing_in_shadow", 0), differing=counts.get("differs", 0), samples=samples,
    )


async def _columns(conn: AsyncConnection, schema: str, table: str) -> list[str]:
    cur = await conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " ORDER BY ordinal_position",
        (schema, table),
    )
    return [name for (name,) in await cur.fetchall()]


def _chunks(rows: list[tuple]) -> Iterator[list[tuple]]:
    for start in range(0, len(rows), WRITE_CHUNK):
        yield rows[start:start + WRITE_CHUNK]
