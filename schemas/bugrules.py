"""Versioned bug normalisation rules: fingerprints and classes of logged errors (pure, no I/O)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas.errors import SchemaError

# Events that name no rules version are grouped by this one. It never changes (replay must regroup old
# events the same way); a tenant moves to another version with `baton bugs regroup --rules N --apply`.
DEFAULT_RULES_VERSION = 1

# Common deployment roots stripped from file paths, whatever the project's own root.
DEPLOYMENT_ROOTS = (
    re.compile(r"^/srv/[^/]+/"), re.compile(r"^/opt/[^/]+/"), re.compile(r"^/usr/src/app/"),
    re.compile(r"^/var/www/html/"), re.compile(r"^/app/"), re.compile(r"^/home/[^/]+/[^/]+/"),
    re.compile(r"^/workspace/"), re.compile(r"^\./"),
)

_TIMESTAMP = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\b|\b\d{2}:\d{2}:\d{2}(\.\d+)?\b"
)
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{12,}\b")
_IPV4 = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b")
_IPV6 = re.compile(r"\b([0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b")
_TEMP_PATH = re.compile(r"(/tmp|/var/tmp|/var/folders|/private/var/folders)/\S*|[A-Za-z]:\\\S*\\Temp\\\S*")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"|`([^`]*)`")
_IDENTIFIER = re.compile(r"^[A-Za-z_./][\w.:$/\\-]*$")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_NUMBER = re.compile(r"(?<!\w)\d+(\.\d+)?")
_DIGITS = re.compile(r"\d+")
_KEPT = "KEPTCODEx"
_ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][\w.\-/\\]+\.\w+")
_SPACES = re.compile(r"\s+")
_STACK_HEADER = re.compile(r"^(Traceback \(most recent call last\):|Stack trace:|Stacktrace:)$", re.I)
_KEPT_CODES = re.compile(r"\b(status|code|errno|error|http)\s*[:=]?\s*(\d{3,5})\b", re.I)

Class = str
# First match wins: the order puts the specific ahead of the general (a timed-out connection is a timeout).
CLASSES: tuple[tuple[Class, re.Pattern[str]], ...] = (
    ("syntax", re.compile(r"SyntaxError|IndentationError|ParseError|syntax error|unexpected (token|end of)|"
                          r"unterminated|invalid syntax", re.I)),
    ("import", re.compile(r"ImportError|ModuleNotFoundError|No module named|cannot find module|"
                          r"Cannot find module|Class .* not found|failed to load module|unresolved import", re.I)),
    ("memory", re.compile(r"MemoryError|out of memory|OutOfMemory|Allowed memory size|cannot allocate|OOM", re.I)),
    ("timeout", re.compile(r"timed? ?out|TimeoutError|ETIMEDOUT|deadline exceeded|Timeout", re.I)),
    ("permission", re.compile(r"PermissionError|Permission denied|EACCES|EPERM|forbidden|not authori[sz]ed|"
                              r"access denied|Unauthorized", re.I)),
    ("database", re.compile(r"SQLSTATE|psycopg|IntegrityError|OperationalError|ProgrammingError|"
                            r"duplicate key|violates .*constraint|relation .* does not exist|deadlock|"
                            r"syntax error at or near|QueryException|sqlite|mysql|postgres", re.I)),
    ("network", re.compile(r"ConnectionError|ConnectionRefused|Connection refused|ECONNREFUSED|ECONNRESET|"
                           r"connection reset|Name or service not known|getaddrinfo|network is unreachable|"
                           r"EHOSTUNREACH|broken pipe|SSL|HTTPError|status (5\d\d|# )", re.I)),
    ("assertion", re.compile(r"AssertionError|assert(ion)? failed|expected .* (but )?got|assert ", re.I)),
    ("name", re.compile(r"NameError|is not defined|Undefined (variable|index|name|property|constant)|"
                        r"ReferenceError|UnboundLocalError|KeyError|has no attribute|undefined method", re.I)),
    ("type", re.compile(r"TypeError|must be (of type|an? )|unsupported operand|is not callable|"
                        r"not subscriptable|cannot be converted|expected type|ValueError|type mismatch", re.I)),
)


@dataclass(frozen=True, slots=True)
class Rules:
    """One version of the normalisation rules."""

    version: int
    # Lines are part of the fingerprint (the same error at two lines is two bugs).
    use_line: bool
    # Status and error codes (`status 404`) survive number normalisation.
    keep_codes: bool
    # Numbers inside a quoted identifier are replaced too (`'order_5531'` ~ `'order_77'`; letters still differ).
    quoted_numbers: bool = False


# Versions are frozen once published: replay regroups every event under the version it names.
RULES: dict[int, Rules] = {
    1: Rules(version=1, use_line=True, keep_codes=False),
    # v2: the same error raised at another line of the same file is one bug; `status 404` and `status 500` are two.
    2: Rules(version=2, use_line=False, keep_codes=True),
    # v3: v2, and numbers inside quoted identifiers are normalised (`KeyError: 'order_5531'` ~ `'order_77'`).
    3: Rules(version=3, use_line=False, keep_codes=True, quoted_numbers=True),
}


class UnknownRules(SchemaError, ValueError):
    """A rules version that does not exist."""


def rules(version: int | None) -> Rules:
    """The rules of a version (None: the default one)."""
    found = RULES.get(DEFAULT_RULES_VERSION if version is None else version)
    if found is None:
        raise UnknownRules(f"no bug rules version {version}; known: {', '.join(map(str, sorted(RULES)))}")
    return found


def _quoted(match: re.Match[str], r: Rules) -> str:
    text = next(group for group in match.groups() if group is not None)
    # A quoted identifier names code (a variable, a constraint, a module) and tells bugs apart; data does not.
    if not _IDENTIFIER.match(text):
        return "STRING"
    return _DIGITS.sub("#", match[0]) if r.quoted_numbers else match[0]


def normalise_message(message: str, version: int | None = None) -> str:
    """The message with ids, addresses, numbers, temp paths and quoted data replaced."""
    r = rules(version)
    text = _TEMP_PATH.sub("TMPPATH", message.strip())
    text = _TIMESTAMP.sub("TIMESTAMP", text)
    text = _EMAIL.sub("EMAIL", text)
    text = _UUID.sub("UUID", text)
    text = _IPV6.sub("IP", text)
    text = _IPV4.sub("IP", text)
    text = _HEX.sub("HEX", text)
    text = _QUOTED.sub(lambda m: _quoted(m, r), text)
    if r.keep_codes:
        text = _KEPT_CODES.sub(lambda m: f"{m[1]} {_KEPT}{m[2]}", text)
    text = _NUMBER.sub("#", text).replace(_KEPT, "")
    return _SPACES.sub(" ", text)


def normalise_path(path: str | None, project_root: str | None = None) -> str:
    """A file path relative to the project: the given root, then common deployment roots, stripped."""
    if not path:
        return ""
    text = path.strip().replace("\\", "/")
    if project_root:
        root = project_root.replace("\\", "/").rstrip("/") + "/"
        if text.startswith(root):
            text = text[len(root):]
    for root_pattern in DEPLOYMENT_ROOTS:
        text = root_pattern.sub("", text, count=1)
    return text


def first_frame(stack: str | None, project_root: str | None = None, version: int | None = None) -> str:
    """The first frame of a stack trace, with paths made relative and numbers replaced."""
    for line in (stack or "").splitlines():
        line = line.strip()
        if line and not _STACK_HEADER.match(line):
            relative = _ABSOLUTE_PATH.sub(lambda m: normalise_path(m[0], project_root), line)
            return normalise_message(relative, version)
    return ""


def classify(message: str, stack: str | None = None) -> Class:
    """The error class of a message (its stack helps when the message alone is vague)."""
    for text in (message, stack or ""):
        for name, pattern in CLASSES:
            if pattern.search(text):
                return name
    return "runtime"


def fingerprint(message: str, file: str | None, line: int | None, stack: str | None = None,
                version: int | None = None, project_root: str | None = None) -> str:
    """sha256 over the version and the normalised message, path, line and first stack frame."""
    r = rules(version)
    parts = (
        f"v{r.version}", normalise_message(message, r.version), normalise_path(file, project_root),
        str(line) if r.use_line and line is not None else "", first_frame(stack, project_root, r.version),
    )
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Regrouping:
    """How bugs grouped by one rules version regroup under another."""

    # new fingerprint -> the live fingerprints it joins
    merges: dict[str, list[str]]
    # live fingerprint -> the new fingerprints it falls apart into
    splits: dict[str, list[str]]
    groups_before: int
    groups_after: int


def compare_groupings(pairs: list[tuple[str, str]]) -> Regrouping:
    """Merges and splits between two groupings of the same reports, given (live, new) fingerprint per report."""
    into: dict[str, set[str]] = {}
    apart: dict[str, set[str]] = {}
    for live, new in pairs:
        into.setdefault(new, set()).add(live)
        apart.setdefault(live, set()).add(new)
    return Regrouping(
        merges={new: sorted(lives) for new, lives in sorted(into.items()) if len(lives) > 1},
        splits={live: sorted(news) for live, news in sorted(apart.items()) if len(news) > 1},
        groups_before=len(apart), groups_after=len(into),
    )
