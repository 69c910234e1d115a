"""(5) the Redis-lock peer: ../shared/peers/redis_locks_peer.py run as a child process by its path, where it
lies (never imported, never copied), with its own venv's Python, over the same messages and contacts as (1)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from rich.markup import escape

from bench.pipeline.common import ROOT, console

if TYPE_CHECKING:
    from bench.pipeline.run import Bench


PEER = ROOT.parent / "shared" / "peers" / "redis_locks_peer.py"  # run where it lies, never copied
PEER_VENV = ROOT / ".bench-peer-venv"
PEER_PACKAGES = ("redis[hiredis]", "psycopg[binary]", "psutil", "uvloop", "orjson")
PEER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PEER_NOT_OURS = ("postgres (others' backends)",)  # in the peer's CPU report, but other clients' work


def peer_unavailable() -> str | None:
    """Why the peer cannot run here (its script, Redis or PostgreSQL missing), or None when it can."""
    if not PEER.exists():
        return f"{PEER} not found"
    for name, port in (("Redis", 6379), ("PostgreSQL", 5432)):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                if name == "Redis":
                    sock.settimeout(1.0)
                    sock.sendall(b"PING\r\n")
                    answer = sock.recv(64)
                    if not answer.startswith(b"+PONG"):
                        return f"Redis at 127.0.0.1:6379 answered {answer[:40]!r} to PING"
        except OSError as exc:
            return f"{name} at 127.0.0.1:{port} does not answer ({exc})"
    try:
        psycopg.connect(PEER_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()
        return f"PostgreSQL {PEER_DSN!r} refused: {first[0] if first else type(exc).__name__}"
    return None


def peer_python(log: Path) -> tuple[Path | None, str]:
    """The peer venv's Python, made once and then reused, and what was done; (None, why) on failure."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import redis, hiredis, psycopg, psutil, uvloop, orjson"]

    def usable() -> bool:
        return python.exists() and subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0

    def tail() -> str:
        text = log.read_text(errors="replace").strip() if log.exists() else ""
        return text[-300:].replace("\n", " | ")

    try:
        if usable():
            return python, f"peer venv {PEER_VENV} (cached)"
        with log.open("ab") as out:
            for step in ([sys.executable, "-m", "venv", str(PEER_VENV)],
                         [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          *PEER_PACKAGES]):
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=600, check=False)
                if done.returncode != 0:
                    return None, f"`{' '.join(step[1:4])} …` exited with {done.returncode}: {tail()}"
        (PEER_VENV / ".gitignore").write_text("*\n")  # never part of the repository (as venv writes from 3.13)
        if usable():
            return python, f"peer venv {PEER_VENV} created ({' '.join(PEER_PACKAGES)})"
        return None, f"{PEER_VENV} still cannot import the peer's packages: {tail()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not prepare {PEER_VENV}: {exc}"


@dataclass
class PeerResult:
    runs: list[dict]
    exit_code: int | None
    seconds: float
    error: str | None = None

    @property
    def chosen(self) -> dict | None:
        """The run with the median answered messages/s (the upper one of two, as the peer's own summary)."""
        ordered = sorted(self.runs, key=lambda r: r["e2e_msgs_per_s"])
        return ordered[len(ordered) // 2] if ordered else None


def peer_cpu(result: dict) -> dict[str, float]:
    """The peer's own CPU seconds per component: driver, workers, Redis, its PostgreSQL backends and the
    server's background processes (not other clients' backends, which it reports too)."""
    return {k: v for k, v in result["cpu"].items() if not k.startswith("_") and k not in PEER_NOT_OURS}


async def run_peer(python: Path, messages: int, contacts: int, runs: int, log_dir: Path) -> PeerResult:
    """The peer over the same messages and contacts as (1); its RESULT lines; bounded in time (its whole
    process group is stopped at the bound)."""
    wait_s = max(60.0, messages / 50)
    timeout = 30 + runs * (wait_s + 120)
    args = [str(python), str(PEER), "--messages", str(messages), "--contacts", str(contacts), "--runs", str(runs),
            "--pg-dsn", PEER_DSN, "--timeout", f"{wait_s:.0f}", "--log-dir", str(log_dir / "peer")]
    results: list[dict] = []
    error = None
    start = time.perf_counter()
    with (log_dir / "peer.log").open("ab") as log:
        log.write(f"$ {' '.join(args)}\n".encode())
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL, cwd=ROOT,
            start_new_session=True)
        try:
            deadline = start + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(process.stdout.readline(), timeout=left)
                if not raw:
                    break
                log.write(raw)
                if raw.startswith(b"RESULT "):
                    try:
                        results.append(json.loads(raw[len(b"RESULT "):]))
                    except ValueError as exc:
                        error = f"unreadable RESULT line ({exc})"
            await asyncio.wait_for(process.wait(), timeout=max(1.0, deadline - time.perf_counter()))
        except TimeoutError:
            error = f"not done within {timeout:.0f} s; stopped"
        finally:
            # The peer and its workers form the process group this bench started; whatever is left of it
            # (a worker that outlived its driver would hold stdout open) is stopped.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    return PeerResult(results, process.returncode, time.perf_counter() - start, error)


def prepare_peer(args: argparse.Namespace, skip: set[str], log_dir: Path) -> tuple[Path | None, str | None]:
    """The peer's services and Python, checked before anything is measured: (its Python, None), or (None, why
    it is left out), said in one line."""
    python_for_peer: Path | None = None
    peer_skipped: str | None = None
    if not args.peer or "peer" in skip:
        peer_skipped = "not run (--no-peer or --skip peer)"
    elif reason := peer_unavailable():
        peer_skipped = f"skipped: {reason}"
        console.print(escape(f"Redis-lock peer comparison skipped: {reason}."), highlight=False)
    else:
        with console.status("preparing the Redis-lock peer's Python…"):
            python_for_peer, how = peer_python(log_dir / "peer-venv.log")
        if python_for_peer is None:
            peer_skipped = f"skipped: {how}"
            console.print(escape(f"Redis-lock peer comparison skipped: {how}."), highlight=False)
        else:
            console.print(f"[dim]{escape(how)}[/dim]", highlight=False)
    return python_for_peer, peer_skipped


async def peer_step(bench: Bench) -> None:
    """(5), when prepare_peer found its Python: its result (or why it failed) goes into bench."""
    if bench.peer_python is None:
        return
    n, contacts, log_dir = bench.n, bench.contacts, bench.log_dir
    # After Baton's services stopped: the peer has the machine to itself, as Baton had in (1).
    runs = bench.args.peer_runs
    with console.status(f"5. the Redis-lock peer: {n:,} messages, {contacts:,} contacts, {runs} run(s)…"):
        peer = bench.peer = await run_peer(bench.peer_python, n, contacts, runs, log_dir)
    if not peer.runs:
        bench.peer_skipped = (f"failed: {peer.error or 'no RESULT line'}, exit code {peer.exit_code}; "
                              f"see {log_dir / 'peer.log'}")
    console.print(f"[dim]5. done at {time.perf_counter() - bench.t_all:.0f} s (peer exit code {peer.exit_code}"
                  f"{escape(', ' + peer.error) if peer.error else ''})[/dim]", highlight=False)
