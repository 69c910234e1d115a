"""Reading the embedded Tansu broker without skipping records.

Tansu 0.6.0 (memory engine) can let a reader see a record batch before an earlier batch of the same partition is
readable, when several producers append to that partition at once (the API and the worker both write a domain
topic). A fetch at offset 3092 was answered from 3096 on, and 3092-3095 were readable moments later. A client takes a
jump in offsets for compaction and reads on from 3096: the worker never folded those four outcomes, while the
projector, fetching a little later, archived them (found by the benchmark at 500 webhooks/s: 4 of 7,500 replies
missing from the read model).

`read_batches_in_order` makes every aiokafka fetch of this process stop before such a gap: the records before it are
returned, the position stays at the gap, and the next fetch asks for it again. A gap still there after
GAP_PATIENCE_S is taken as real (as compaction would leave), with a warning. Apache Kafka exposes a partition's
records in offset order (the high watermark), so this is installed on the embedded profile only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiokafka.consumer import fetcher

from streams.settings import Settings

GAP_PATIENCE_S = 5.0

log = logging.getLogger(__name__)

# (topic partition, first missing offset) -> when a fetch first found that gap
_gaps_seen: dict[tuple[Any, int], float] = {}


class _BatchesUpToGap:
    """A fetch response's record batches, up to the first one that starts after the offset the previous ends at."""

    def __init__(self, tp: Any, records: Any, offset: int) -> None:
        self._tp, self._records, self._next = tp, records, offset
        self._batch: Any = None
        self._held = False

    def has_next(self) -> bool:
        if self._batch is None and not self._held and self._records.has_next():
            batch = self._records.next_batch()
            if batch is not None and batch.base_offset > self._next and not self._gap_is_real(batch.base_offset):
                self._held = True
            else:
                self._batch = batch
        return self._batch is not None

    def next_batch(self) -> Any:
        batch, self._batch = self._batch, None
        _gaps_seen.pop((self._tp, self._next), None)  # a gap a fetch found before, filled by now
        self._next = max(self._next, batch.next_offset)
        return batch

    def _gap_is_real(self, found: int) -> bool:
        now = time.monotonic()
        if now - _gaps_seen.setdefault((self._tp, self._next), now) < GAP_PATIENCE_S:
            return False
        del _gaps_seen[(self._tp, self._next)]
        log.warning("%s: offsets %d-%d still missing after %.0f s; reading on from %d",
                    self._tp, self._next, found - 1, GAP_PATIENCE_S, found)
        return True


class _RecordsUpToGap(fetcher.PartitionRecords):
    def __init__(self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, *rest: Any) -> None:
        super().__init__(tp, _BatchesUpToGap(tp, records, fetch_offset), aborted_transactions, fetch_offset, *rest)


def read_batches_in_order(settings: Settings) -> None:
    """On the embedded profile, every fetch of this process stops before a gap in offsets and asks for it again."""
    if settings.embedded:
        fetcher.PartitionRecords = _RecordsUpToGap  # type: ignore[misc]
