"""One run of the bench as a sequence of named steps: the peer checked, then per broker (1)-(4), then (5), then
the report."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.pipeline.common import code_version, console, workers_name
from bench.pipeline.fold import FoldRates, fold_step
from bench.pipeline.harness import (
    BenchBroker,
    CpuMeter,
    base_settings,
    fresh_runtime,
    start_broker,
    start_runtime,
)
from bench.pipeline.ingest import ALONE, BatonRun, ingest_step, ingest_to_projection
from bench.pipeline.latency import LatencyResult, latency_step
from bench.pipeline.peer import PeerResult, peer_step, prepare_peer
from bench.pipeline.profiles import start_spies, stop_spies
from bench.pipeline.report import print_report
from streams.embedded import EmbeddedPostgres
from streams.settings import Settings


@dataclass
class Bench:
    """What the arguments make of this run, and everything it has measured so far."""

    args: argparse.Namespace
    n: int
    contacts: int
    fold_n: int
    skip: set[str]
    run_id: str
    tmp: Path
    log_dir: Path
    profile: str | None
    t_all: float
    postmaster: int = 0
    # broker → phase → (wall, CPU per component)
    cpu_rows: dict[str, dict[str, tuple[float, dict[str, float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    baton_runs: list[BatonRun] = field(default_factory=list)
    six_domain_runs: list[BatonRun] = field(default_factory=list)  # --conversations-alone: per broker, alone first
    lats: list[LatencyResult] = field(default_factory=list)
    projector_batches: dict[str, list[list[float]]] = field(default_factory=dict)
    spy_roles: list[tuple[str, Path]] = field(default_factory=list)
    folds: list[FoldRates] = field(default_factory=list)
    peer_python: Path | None = None
    peer_skipped: str | None = None
    peer: PeerResult | None = None

    @classmethod
    def create(cls, args: argparse.Namespace) -> Bench:
        n = args.events
        run_id = uuid.uuid4().hex[:8]
        tmp = Path(tempfile.mkdtemp(prefix="baton-bench-"))
        log_dir = tmp / "logs"
        log_dir.mkdir(parents=True)
        return cls(args=args, n=n, contacts=args.contacts or max(1, n // 5), fold_n=args.fold_events or n,
                   skip=set(filter(None, args.skip.split(","))), run_id=run_id, tmp=tmp, log_dir=log_dir,
                   profile=None if args.profile == "none" else args.profile, t_all=time.perf_counter())


async def run(args: argparse.Namespace) -> None:
    bench = Bench.create(args)
    console.print(f"[dim]bench run {bench.run_id}: temp dir {bench.tmp}; code {code_version()}[/dim]", highlight=False)
    # The peer's services and Python are checked first (nothing is measured yet); it runs at the end.
    bench.peer_python, bench.peer_skipped = prepare_peer(args, bench.skip, bench.log_dir)
    postgres = EmbeddedPostgres(bench.tmp / "pgdata").start()
    try:
        bench.postmaster = int((bench.tmp / "pgdata" / "postmaster.pid").read_text().split()[0])
        for broker_profile in args.broker_list:
            await on_broker(bench, postgres, broker_profile)
    finally:
        postgres.stop()
    await peer_step(bench)
    print_report(bench)
    console.print(f"[dim]whole bench {time.perf_counter() - bench.t_all:.0f} s; "
                  f"logs in {bench.tmp if args.keep else '(removed)'}[/dim]")
    if not args.keep:
        shutil.rmtree(bench.tmp, ignore_errors=True)


async def on_broker(bench: Bench, postgres: EmbeddedPostgres, broker_profile: str) -> None:
    """(1) and (2) once per worker count, then (3) and (4), on one broker started for them."""
    broker_logs = bench.log_dir / broker_profile
    broker_logs.mkdir()
    broker = start_broker(broker_profile, broker_logs, bench.notes)
    if broker is None:
        return
    bench.cpu_rows[broker.name] = {}
    try:
        base = base_settings(broker, postgres, bench.run_id, bench.args.partitions, bench.tmp)
        if bench.args.warm_up_rounds:
            await warm_up_broker(bench, postgres, base, broker)
        for count in bench.args.worker_counts:
            await on_runtime(bench, postgres, base, broker, count)
        if bench.args.conversations_alone and "ingest" not in bench.skip:
            await six_domain_step(bench, postgres, base, broker)
        if "fold" not in bench.skip or "baselines" not in bench.skip:
            await fold_step(bench, base, broker, broker_logs)
    finally:
        broker.stop()


async def warm_up_broker(bench: Bench, postgres: EmbeddedPostgres, base: Settings, broker: BenchBroker) -> None:
    """(1)'s load, unmeasured, --warm-up-rounds times on a runtime of its own. A broker in service compiled its hot
    paths long ago; in a JVM started for this run, the JIT compiler threads are over half of Apache Kafka's CPU
    in the first round, and below half from the third on (each round prints its share, and (1) its own)."""
    runtime = fresh_runtime(base, postgres, bench.run_id, f"{broker.profile}_warmup", bench.tmp, 1)
    try:
        token = await start_runtime(runtime, bench.tmp / f"projector_batches-{broker.profile}_warmup.json", 1,
                                    f"{broker.name}, warm-up")
        for round_ in range(1, bench.args.warm_up_rounds + 1):
            with console.status(f"warming up {broker.name}: round {round_}, {bench.n} unmeasured events…"):
                meter = CpuMeter({}, broker, bench.postmaster).start()
                await ingest_to_projection(runtime, token, bench.n, bench.contacts, f"{bench.run_id}warmup{round_}",
                                           prefix=f"35{round_:02d}")
                wall, used = meter.stop()
            console.print(f"[dim]{broker.name} warm-up round {round_}: {bench.n} events in {wall:.1f} s; broker CPU "
                          f"{used.get(broker.component, 0.0):.2f} s, of which JIT compiler {meter.jit:.2f} s[/dim]",
                          highlight=False)
    finally:
        runtime.stop()


async def six_domain_step(bench: Bench, postgres: EmbeddedPostgres, base: Settings, broker: BenchBroker) -> None:
    """(1) 2 × --conversations-alone + 1 more times, each on a fresh runtime, with the conversations domain alone
    and with six domains in turn, alone first and last. The broker warms as the bench goes on (the Kafka JVM's JIT
    compiler most of all: a run after (2) found it at 0.02 s of the broker's 0.37 s, against 0.71 of 1.28 s in
    (1)), so the runs of each kind are spread evenly over the same stretch, and a steady warming favours neither;
    one run of 5,000 messages varies by about 10 %, so each kind's mean is compared."""
    alone, six = (base.model_copy(update={"domains": domains}) for domains in ("conversations", bench.args.against))
    for position in range(1, 2 * bench.args.conversations_alone + 2):
        await on_runtime(bench, postgres, six if position % 2 == 0 else alone, broker, bench.args.latency_workers,
                         comparison=position)


async def on_runtime(bench: Bench, postgres: EmbeddedPostgres, base: Settings, broker: BenchBroker,
                     count: int, comparison: int = 0) -> None:
    """(1), and (2) when count is --latency-workers, on a fresh runtime with count workers; (1) alone for the run
    at position `comparison` (from 1) of the six-domain comparison."""
    alone = base.domains == "conversations"
    do_ingest = "ingest" not in bench.skip
    do_latency = "latency" not in bench.skip and count == bench.args.latency_workers and not comparison
    if not (do_ingest or do_latency):
        return
    tag, key = f"{broker.name}, {workers_name(count)}", f"{broker.profile}_w{count}"
    if alone:
        tag, key = f"{tag}, {ALONE}", f"{key}_alone"
    if comparison:
        tag, key = f"{tag}, comparison run {comparison}", f"{key}_c{comparison}"
    runtime = fresh_runtime(base, postgres, bench.run_id, key, bench.tmp, count)
    probe_out = bench.tmp / f"projector_batches-{key}.json"
    try:
        token = await start_runtime(runtime, probe_out, count, tag)
        roles = {p.pid: role for role, p in runtime.processes.items()}
        spies = []
        if bench.profile == "py-spy" and do_ingest:
            spies = start_spies(runtime, bench.tmp, key, tag, bench.spy_roles)
        if do_ingest:
            await ingest_step(bench, runtime, token, broker, roles, count, tag, key, alone, bool(comparison))
        stop_spies(spies)
        runtime.check_alive()
        if do_latency:
            await latency_step(bench, runtime, token, broker, roles, count, tag)
    finally:
        runtime.stop()
    if probe_out.exists():
        bench.projector_batches[tag] = json.loads(probe_out.read_text())
