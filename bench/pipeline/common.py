"""What every part of the pipeline bench shares: the repository, the tenant and texts, the console, formats."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ("hola, ¿horario?", "¿cuánto cuesta el té matcha?", "no funciona mi cafetera")
TENANT = "acme"
console = Console(width=150)


def code_version() -> str:
    """HEAD's short hash, and the product files changed in the work tree (measured as they are)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agents", "streams", "projections", "schemas"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10, check=False).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted {', '.join(changed)}" if changed else "")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


def workers_name(count: int) -> str:
    return f"{count} worker" + ("s" if count > 1 else "")
