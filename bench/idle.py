"""What an idle runtime costs: each process's CPU with no traffic at all, as a share of one core.

    .venv/bin/python -m bench.idle [--settle 20] [--seconds 20]
    BATON_DOMAINS=conversations .venv/bin/python -m bench.idle   # the conversations domain alone

Starts a fresh embedded runtime (broker, PostgreSQL, one worker, projector, API) in a temporary directory, waits
--settle seconds once its API answers (start-up work done), then reads each process's CPU time from /proc over
--seconds and prints it per role. Every registered domain's agents run, receiving nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.pipeline.common import ROOT
from bench.pipeline.harness import proc_cpu
from streams.runtime import Runtime
from streams.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after start-up")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-idle-") as tmp:
        settings = Settings(data_dir=Path(tmp), api_port=0, tenants_file=ROOT / "examples" / "tenants.toml")
        with Runtime(settings).start() as runtime:
            time.sleep(args.settle)
            # PostgreSQL's work happens in its backends, not its postmaster: left out.
            pids = {role: pid for role, pid in runtime.pids().items() if role not in ("supervisor", "postgres")}
            before = proc_cpu()
            time.sleep(args.seconds)
            after = proc_cpu()
    domains = os.environ.get("BATON_DOMAINS") or "every registered domain"
    print(f"Idle runtime ({domains}), {args.seconds:.0f} s after {args.settle:.0f} s of settling:")
    for role in pids:
        used = after[pids[role]][2] - before[pids[role]][2]
        print(f"  {role:<10} {100 * used / args.seconds:5.1f} % of a core")


if __name__ == "__main__":
    main()
