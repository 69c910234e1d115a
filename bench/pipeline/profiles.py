"""--profile: py-spy samplers on the runtime's roles during (1), and the profiles read back and printed."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.pipeline.common import ROOT, console
from bench.pipeline.harness import BROKERS, spawn
from streams.runtime import Runtime

# Ordered: the first rule whose every marker occurs in a busy stack names the sample's category.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fold_batch: decode_state (table bytes → state)", ("fold_batch", "decode_state")),
    ("fold_batch: envelope decode", ("fold_batch", "codec.py")),
    ("fold_batch: pure fold and the rest", ("fold_batch",)),
    ("encode_state (state → table bytes)", ("encode_state",)),
    ("effects: Effects.run (rules, responders, sender)", ("Effects.run",)),
    ("effects: envelope decode of every record", ("_decode_effect",)),
    ("produce: aiokafka producer + sender", ("aiokafka/producer",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/topics.py",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/channels.py",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("send_changelog",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/transport/producer.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("aiokafka/consumer",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/transport/consumer.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/transport/conductor.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/streams.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/agents/",)),
    ("network: aiokafka client/connection, asyncio transports", ("aiokafka/",)),
    ("network: aiokafka client/connection, asyncio transports", ("selector_events.py",)),
    ("table: faust table get/set, sensors", ("faust/tables/",)),
    ("table: faust table get/set, sensors", ("faust/sensors/",)),
    ("projector: psycopg", ("psycopg/",)),
    ("projector: row builders", ("writers/conversations.py",)),
    ("api: uvicorn/fastapi/starlette", ("uvicorn/",)),
    ("api: uvicorn/fastapi/starlette", ("starlette/",)),
    ("api: uvicorn/fastapi/starlette", ("fastapi/",)),
    ("logging", ("logging/",)),
    ("logging", ("structlog/",)),
    ("asyncio loop and everything else", ()),
)

IDLE = ("EpollSelector.select", "Condition.wait", "select (selectors", "_wait_for_tstate_lock")


def spy_top(path: Path, limit: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], Counter]:
    """py-spy raw (collapsed) stacks → busy samples, top self frames, top inclusive frames, categories."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    categories: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames or frames[-1].startswith(IDLE):
            continue  # waiting, not working: percentages are of busy samples
        total += samples
        joined = ";".join(frames)
        categories[next(name for name, markers in CATEGORIES if all(m in joined for m in markers))] += samples
        own[_short(frames[-1])] += samples
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += samples
    return total, own.most_common(limit), inclusive.most_common(limit), categories


def _short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:12)' → 'fn (pkg/mod.py:12)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def cprofile_top(path: Path, limit: int = 25) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def start_spies(runtime: Runtime, tmp: Path, key: str, tag: str,
                spy_roles: list[tuple[str, Path]]) -> list[subprocess.Popen]:
    """py-spy recording each of the runtime's processes; each role and output path is added to spy_roles."""
    spies = []
    for role, process in runtime.processes.items():
        out = tmp / f"{key}-{role}.spy.txt"
        spies.append(spawn(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(process.pid),
             "-r", "100", "--format", "raw", "-o", str(out)], None, None))
        spy_roles.append((f"{role}, {tag}", out))
    return spies


def stop_spies(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
    for spy in spies:
        spy.wait(30)


def print_spy(role: str, path: Path) -> None:
    total, own, inclusive, categories = spy_top(path, 60)
    console.print(f"\n[bold]py-spy {role}: {total} busy samples (idle waits in select/Condition.wait left out)[/bold]")
    console.print("  by category (first matching rule in CATEGORIES):")
    for name, count in categories.most_common():
        console.print(f"    {100 * count / total:5.1f}%  {name}", highlight=False)
    console.print("  self:")
    for frame, count in own[:20]:
        console.print(f"    {100 * count / total:5.1f}%  {frame}", highlight=False)
    console.print("  inclusive:")
    for frame, count in inclusive[:40]:
        if count / total > 0.97:
            continue  # the entry chain common to every sample
        console.print(f"    {100 * count / total:5.1f}%  {frame}", highlight=False)


def print_profiles(profile: str | None, broker_list: list[str], log_dir: Path,
                   spy_roles: list[tuple[str, Path]]) -> None:
    """The fold worker's profile (3) per broker, and with py-spy the runtime's roles during (1)."""
    if profile == "py-spy":
        fold_spies = [(f"fold worker (3), {BROKERS[b]}", log_dir / b / "fold_worker.spy.txt") for b in broker_list]
        for role, path in [*fold_spies, *((f"{r} (1)", p) for r, p in spy_roles)]:
            if path.exists():
                print_spy(role, path)
    if profile == "cprofile":
        for b in broker_list:
            if (log_dir / b / "fold_worker.prof").exists():
                console.print(f"\n[bold]cProfile fold worker (3), {BROKERS[b]}[/bold]")
                console.print(cprofile_top(log_dir / b / "fold_worker.prof"), highlight=False, markup=False)
