"""python -m bench.pipeline: the command line (the package's docstring is its --help)."""

from __future__ import annotations

import argparse
import asyncio

import bench.pipeline
from bench.pipeline.harness import BROKERS
from bench.pipeline.run import run


def int_list(text: str, name: str, parser: argparse.ArgumentParser, most: int) -> list[int]:
    """'1,2' → [1, 2]: positive, without repeats, at most `most` of them."""
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        parser.error(f"{name}: comma-separated whole numbers, got {text!r}")
    if not values or any(v < 1 for v in values) or len(values) > most:
        parser.error(f"{name}: 1 to {most} positive numbers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=bench.pipeline.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000, help="events for ingest → projection (1) and the peer (5)")
    parser.add_argument("--contacts", type=int, default=0, help="contacts for (1), (3) and (5); default events / 5")
    parser.add_argument("--fold-events", type=int, default=0, help="pre-loaded records for (3) and (4); default --events")
    parser.add_argument("--workers", default="1",
                        help="comma-separated worker counts: (1) runs once per count on a fresh runtime, e.g. 1,2")
    parser.add_argument("--warm-up-rounds", type=int, default=3,
                        help="rounds of (1)'s load on each broker, unmeasured, before (1); 0 for a cold broker")
    parser.add_argument("--conversations-alone", type=int, nargs="?", const=2, default=0, metavar="ROUNDS",
                        help="the six-domain aim: (1) 2 × ROUNDS + 1 more times per broker (default 2 rounds), "
                             "conversations domain alone and six domains in turn, alone first and last")
    parser.add_argument("--against", default="", metavar="DOMAINS",
                        help="what --conversations-alone compares with: these domains (comma-separated) instead of "
                             "all six, e.g. conversations,outbound,steps,learning to leave out the workflow domain's "
                             "search index")
    parser.add_argument("--rate", type=int, default=500, help="webhook deliveries per second for (2)")
    parser.add_argument("--rates", default="",
                        help="comma-separated rates: (2) runs once per rate, e.g. 100,500; default --rate")
    parser.add_argument("--latency-workers", type=int, default=0,
                        help="worker count of the runtime (2) runs on, one of --workers; default the first")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each open-loop run (2)")
    parser.add_argument("--latency-contacts", type=int, default=2000, help="rotating contacts for (2)")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds (2) waits after the last delivery is due")
    parser.add_argument("--max-inflight", type=int, default=64, help="most open webhook POSTs in (2)")
    parser.add_argument("--get-budget", type=int, default=200, help="most GET /v1/conversations per second in (2)")
    parser.add_argument("--baseline-loglevel", default="info",
                        help="Faust log level of the baselines; info as the worker (error: root logger at DEBUG)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (Baton's default)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="run the Redis-lock peer (5) when Redis and PostgreSQL answer on 127.0.0.1")
    parser.add_argument("--peer-runs", type=int, default=1, help="runs of the peer; the median by msgs/s is compared")
    parser.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none",
                        help="profile the fold worker child in (3); py-spy also samples worker/projector/api in (1)")
    parser.add_argument("--brokers", default="embedded,kafka",
                        help="comma-separated brokers (1)-(4) run on, one after the other: embedded (Tansu), kafka "
                             "(local Apache Kafka; skipped with one line where java or mvn is missing)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ingest,latency,fold,baselines,peer")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, profiles)")
    args = parser.parse_args()
    args.worker_counts = int_list(args.workers, "--workers", parser, 4)
    args.broker_list = list(dict.fromkeys(b.strip() for b in args.brokers.split(",") if b.strip()))
    if not args.broker_list or not set(args.broker_list) <= set(BROKERS):
        parser.error(f"--brokers: one or more of {','.join(BROKERS)}, got {args.brokers!r}")
    args.rate_list = int_list(args.rates, "--rates", parser, 6) if args.rates else [args.rate]
    args.latency_workers = args.latency_workers or args.worker_counts[0]
    if args.latency_workers not in args.worker_counts:
        parser.error(f"--latency-workers {args.latency_workers} is not one of --workers {args.workers}")
    if args.warm_up_rounds < 0:
        parser.error("--warm-up-rounds: 0 or more")
    if args.peer_runs < 1:
        parser.error("--peer-runs: at least 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
