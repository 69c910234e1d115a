"""The cost ledger, summed by day, domain, model, agent or user for one tenant."""

from __future__ import annotations

from datetime import date
from typing import Literal

from psycopg import sql
from pydantic import BaseModel

from projections.connections import Source, connection

GroupBy = Literal["day", "domain", "model", "agent", "user"]
_COLUMN = {"day": "day", "domain": "domain", "model": "model", "agent": "agent_id", "user": "user_id"}


class CostGroup(BaseModel):
    key: str | None
    split: str | None = None  # the split_by value, when asked for
    calls: int
    failed: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: float


class CostReport(BaseModel):
    group_by: GroupBy
    split_by: GroupBy | None = None
    since: date | None
    until: date | None
    total_usd: float
    groups: list[CostGroup]


async def cost_report(source: Source, tenant_id: str, group_by: GroupBy, since: date | None = None,
                      until: date | None = None, split_by: GroupBy | None = None) -> CostReport:
    """Totals per group (and split, e.g. per day and model), most expensive first (by day: oldest first)."""
    split = sql.SQL("NULL::text") if split_by is None else sql.SQL("{}::text").format(sql.Identifier(_COLUMN[split_by]))
    order = sql.SQL("1, 2") if group_by == "day" else sql.SQL("9 DESC, 1, 2")
    query = sql.SQL(
        "SELECT {column}::text, {split}, sum(calls), sum(failed), sum(input_tokens), sum(output_tokens),"
        " sum(cache_read_tokens), sum(cache_write_tokens), sum(cost_usd)"
        " FROM llm_costs WHERE tenant_id = %s AND (%s::date IS NULL OR day >= %s) AND (%s::date IS NULL OR day <= %s)"
        " GROUP BY 1, 2 ORDER BY {order}"
    ).format(column=sql.Identifier(_COLUMN[group_by]), split=split, order=order)
    async with connection(source) as conn:
        cur = await conn.execute(query, (tenant_id, since, since, until, until))
        rows = await cur.fetchall()
    groups = [CostGroup(key=r[0], split=r[1], calls=r[2], failed=r[3], input_tokens=r[4], output_tokens=r[5],
                        cache_read_tokens=r[6], cache_write_tokens=r[7], cost_usd=float(r[8])) for r in rows]
    return CostReport(group_by=group_by, split_by=split_by, since=since, until=until,
                      total_usd=round(sum(g.cost_usd for g in groups), 9), groups=groups)
