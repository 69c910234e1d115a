"""The tally read model: one row per counter."""

from __future__ import annotations

from projections.readmodel import ReadModel
from tests.tally.schemas import tally_stream_id

COUNTERS = ReadModel(
    table="tally_counters",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("counter", "text"), ("total", "bigint"),
             ("counts", "integer"), ("milestones", "integer"), ("announced", "integer")),
    row=lambda s: (tally_stream_id(s.tenant_id, s.counter), s.tenant_id, s.counter, s.total, s.counts,
                   s.milestones, s.announced),
)
