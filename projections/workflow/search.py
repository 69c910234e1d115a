"""Context search's read model and query language: the search table derived from the events archive, the word
forms one query word stands for, and a web-style query turned into tsqueries and the relevance of each match.

The index holds PostgreSQL's own English and Spanish stems (`to_tsvector`, C speed, no dictionary files). Stems
alone miss irregular forms (english snowball: override → overrid, overridden → overridden; fail → fail, failure →
failur), so a query word stands for every form of its lemma in `LEMMAS`, each stemmed both ways: the table is
applied on the query side, where editing it needs no re-index and no replay.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection, AsyncCursor, sql

from projections.readmodel import ReadModel

# Weight of a query unit found among the event type's words, and found only in the payload's text.
TYPE_WEIGHT, TEXT_WEIGHT = 1.0, 0.5

# Forms of one lemma that PostgreSQL's English and Spanish snowball stemmers do not bring together (a form the
# stemmers already join needs no entry; listing it does no harm). Lower case, one group per lemma.
LEMMAS: tuple[tuple[str, ...], ...] = (
    ("override", "overrides", "overriding", "overridden", "overrode", "overridable"),
    ("fail", "fails", "failed", "failing", "failure", "failures"),
    ("reject", "rejects", "rejected", "rejecting", "rejection", "rejections"),
    ("complete", "completes", "completed", "completing", "completion", "completions"),
    ("approve", "approves", "approved", "approving", "approval", "approvals"),
    ("deploy", "deploys", "deployed", "deploying", "deployment", "deployments"),
    ("validate", "validates", "validated", "validating", "validation", "validations"),
    ("run", "runs", "ran", "running"),
    ("write", "writes", "wrote", "written", "writing"),
    ("begin", "begins", "began", "begun", "beginning"),
    ("break", "breaks", "broke", "broken", "breaking"),
    ("choose", "chooses", "chose", "chosen", "choosing"),
    ("log", "logs", "logged", "logging"),
    ("bug", "bugs"),
    ("create", "creates", "created", "creating", "creation"),
    ("start", "starts", "started", "starting"),
    ("end", "ends", "ended", "ending"),
    ("send", "sends", "sent", "sending"),
    ("pay", "pays", "paid", "paying", "payment", "payments"),
    # Spanish
    ("desplegar", "despliegue", "despliegues", "desplegado", "desplegada", "despliega", "desplegó"),
    ("fallar", "fallo", "fallos", "falló", "falla", "fallas", "fallido", "fallida"),
    ("pagar", "pago", "pagos", "pagado", "pagada", "pagó"),
    ("buscar", "busca", "búsqueda", "búsquedas", "busqueda", "busquedas", "buscado"),
    ("validar", "validación", "validaciones", "validacion", "validado", "validada"),
    ("facturar", "factura", "facturas", "facturado", "facturada"),
    ("resolver", "resuelve", "resuelto", "resuelta", "resolvió"),
    ("abrir", "abre", "abierto", "abierta", "abrió"),
    ("escribir", "escribe", "escrito", "escrita", "escribió"),
    ("romper", "rompe", "roto", "rota", "rompió"),
    ("hacer", "hace", "hecho", "hecha", "hizo"),
    ("poder", "puede", "pueden", "pudo"),
    ("sesión", "sesiones", "sesion"),
    ("error", "errores"),
)
_FORMS: dict[str, tuple[str, ...]] = {form: group for group in LEMMAS for form in group}

# Words as PostgreSQL's parser splits them (letters and digits; `_`, `-`, `.` and the rest separate).
_WORD = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r'(-?)"([^"]*)"?|(-?)([^\s"]+)')


def forms(word: str) -> tuple[str, ...]:
    """Every form a query word stands for: its lemma's group, or the word alone."""
    word = word.lower()
    return _FORMS.get(word, (word,))


@dataclass(frozen=True, slots=True)
class Unit:
    """A word or a quoted phrase of the query (a phrase: its words in order)."""

    words: tuple[str, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Parsed:
    """A query as AND of groups, each group the OR of its units (web search syntax: `a b`, `a or b`, `"a b"`, `-a`)."""

    groups: tuple[tuple[Unit, ...], ...]

    @property
    def positive(self) -> tuple[Unit, ...]:
        """The units relevance counts: every one not negated."""
        return tuple(u for group in self.groups for u in group if not u.negated)

    def words(self) -> set[str]:
        return {form for group in self.groups for u in group for w in u.words for form in forms(w)}


def parse(query: str) -> Parsed:
    """The query's units, grouped as web search syntax groups them (OR binds tighter than the implicit AND)."""
    groups: list[list[Unit]] = []
    joining = False
    for match in _TOKEN.finditer(query):
        phrase = match[2] is not None
        negated = bool(match[1] if phrase else match[3])
        raw = match[2] if phrase else match[4]
        if not phrase and not negated and raw.lower() == "or":
            joining = bool(groups)
            continue
        words = tuple(w.lower() for w in _WORD.findall(raw))
        if not words:
            continue
        for index, unit in enumerate([Unit(words, negated)] if phrase else [Unit((w,), negated) for w in words]):
            if joining and index == 0 and not unit.negated and not groups[-1][-1].negated:
                groups[-1].append(unit)
            else:
                groups.append([unit])
        joining = False
    return Parsed(tuple(tuple(g) for g in groups))


# Stems of a word form in English and Spanish, as PostgreSQL computes them (a stop word has none).
_STEMS: dict[str, tuple[str, ...]] = {}


async def stems(conn: AsyncConnection, words: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each word's English and Spanish lexemes (cached per process: a stemmer does not change while it runs)."""
    missing = sorted({w for w in words if w not in _STEMS})
    if missing:
        cur = await conn.execute(
            "SELECT w, array(SELECT DISTINCT x FROM unnest(tsvector_to_array(to_tsvector('english', w))"
            " || tsvector_to_array(to_tsvector('spanish', w))) AS x ORDER BY x) FROM unnest(%s::text[]) AS w",
            (missing,), prepare=False)
        for word, lexemes in await cur.fetchall():
            if len(_STEMS) > 100_000:
                _STEMS.clear()
            _STEMS[word] = tuple(lexemes)
    return {w: _STEMS[w] for w in words}


def _lexeme(text: str, weight: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'" + (f":{weight}" if weight else "")


@dataclass(frozen=True, slots=True)
class TextQuery:
    """A parsed query as tsquery texts: the match, and per positive unit its match anywhere and in the type."""

    match: str
    units: tuple[str, ...]
    in_type: tuple[str, ...]
    highlight: str

    @property
    def empty(self) -> bool:
        return not self.match


async def text_query(conn: AsyncConnection, query: str) -> TextQuery:
    """The tsqueries of a web-style query: each word stands for every form of its lemma, stemmed both ways."""
    parsed = parse(query)
    lexemes = await stems(conn, parsed.words())

    def word(w: str, weight: str) -> str | None:
        found = sorted({x for form in forms(w) for x in lexemes[form]})
        return "(" + " | ".join(_lexeme(x, weight) for x in found) + ")" if found else None

    def unit(u: Unit, weight: str = "") -> str | None:
        parts: list[str] = []
        gap = 1
        for w in u.words:
            found = word(w, weight)
            if found is None:  # a stop word: the phrase keeps its place
                gap += 1 if parts else 0
                continue
            parts.append(found if not parts else f"<{gap}> {found}" if gap > 1 else f"<-> {found}")
            gap = 1
        if not parts:
            return None
        return "(" + " ".join(parts) + ")"

    clauses: list[str] = []
    units: list[str] = []
    in_type: list[str] = []
    for group in parsed.groups:
        alternatives = []
        for u in group:
            found = unit(u)
            if found is None:
                continue
            if u.negated:
                alternatives.append(f"!{found}")
            else:
                alternatives.append(found)
                units.append(found)
                in_type.append(unit(u, "A") or found)
        if alternatives:
            clauses.append("(" + " | ".join(alternatives) + ")")
    positive = sorted({x for u in parsed.positive for w in u.words for form in forms(w) for x in lexemes[form]})
    highlight = " | ".join(_lexeme(x, "") for x in positive)
    if not units:  # only negations or stop words: nothing to rank by
        return TextQuery("", (), (), "")
    return TextQuery(" & ".join(clauses), tuple(units), tuple(in_type), highlight)


def relevance(query: TextQuery, alias: str = "e") -> sql.Composable:
    """Relevance of a matching row: the mean over the query's units of TYPE_WEIGHT when the unit is found among
    the type's words, TEXT_WEIGHT when only in the payload's text, 0 when absent (1.0 for an empty query)."""
    if query.empty:
        return sql.SQL("1.0::float8")
    doc = sql.Identifier(alias, "doc")
    terms = [sql.SQL("CASE WHEN {doc} @@ {a}::tsquery THEN {tw} WHEN {doc} @@ {u}::tsquery THEN {xw} ELSE 0 END")
             .format(doc=doc, a=sql.Literal(a), u=sql.Literal(u), tw=sql.Literal(TYPE_WEIGHT),
                     xw=sql.Literal(TEXT_WEIGHT))
             for u, a in zip(query.units, query.in_type, strict=True)]
    return sql.SQL("(({}) / {}::float8)").format(sql.SQL(" + ").join(terms), sql.Literal(len(terms)))


async def relevance_bound(conn: AsyncConnection, tenant_id: str, query: TextQuery) -> float:
    """The highest relevance any of the tenant's events can have: a unit can weigh TYPE_WEIGHT only if some event
    type the tenant's archive holds has it among its words."""
    if query.empty:
        return 1.0
    cur = await conn.execute(
        "SELECT u.i, coalesce(bool_or(setweight(to_tsvector('english', replace(t.type, '.', ' ')), 'A') @@ u.q), false)"
        " FROM unnest(%s::tsquery[]) WITH ORDINALITY AS u(q, i)"
        " LEFT JOIN workflow_search_types t ON t.tenant_id = %s GROUP BY u.i",
        (list(query.in_type), tenant_id), prepare=False)
    in_type = dict(await cur.fetchall())
    return sum(TYPE_WEIGHT if in_type.get(i + 1) else TEXT_WEIGHT for i in range(len(query.units))) / len(query.units)


# The search row of an archived event: what `derive_search` computes from `events`, in the live schema after each
# projector batch and in replay's shadow schema after the archive is rebuilt.
_DOC = ("setweight(to_tsvector('english', replace(e.type, '.', ' ')), 'A')"
        " || setweight(jsonb_to_tsvector('english', e.payload, '[\"string\"]'), 'B')"
        " || setweight(jsonb_to_tsvector('spanish', e.payload, '[\"string\"]'), 'B')")


async def derive_search(cur: AsyncCursor, schema: str, event_ids: Sequence[uuid.UUID] | None) -> int:
    """Index archived events: the given ones, or (None) every archived event the search table lacks. Returns the
    rows added. Runs after the archive's transaction, so writing an event pays nothing for search."""
    search, types, events = (sql.Identifier(schema, t) for t in ("workflow_search", "workflow_search_types", "events"))
    if event_ids is None:
        which = sql.SQL("NOT EXISTS (SELECT 1 FROM {} s WHERE s.event_id = e.event_id)").format(search)
        params: tuple = ()
    else:
        if not event_ids:
            return 0
        which, params = sql.SQL("e.event_id = ANY(%s)"), (list(event_ids),)
    await cur.execute(sql.SQL(
        "WITH added AS (INSERT INTO {search} (event_id, tenant_id, task_code, stream_id, type, occurred_at, doc)"
        " SELECT e.event_id, e.tenant_id, e.payload->>'task_code', e.stream_id, e.type, e.occurred_at, {doc}"
        " FROM {events} e WHERE {which} ON CONFLICT (event_id) DO NOTHING RETURNING tenant_id, type),"
        " typed AS (INSERT INTO {types} (key, tenant_id, type)"
        " SELECT DISTINCT tenant_id || ' ' || type, tenant_id, type FROM added"
        " ON CONFLICT (key) DO UPDATE SET projected_at = now())"
        " SELECT count(*) FROM added"
    ).format(search=search, types=types, events=events, doc=sql.SQL(_DOC), which=which), params)
    row = await cur.fetchone()
    return row[0] if row else 0


SEARCH = ReadModel(
    table="workflow_search",
    columns=(("event_id", "uuid"), ("tenant_id", "text"), ("task_code", "text"), ("stream_id", "text"),
             ("type", "text"), ("occurred_at", "timestamptz"), ("doc", "tsvector")),
    derive=derive_search,
)
# Filled by derive_search with workflow_search.
SEARCH_TYPES = ReadModel(
    table="workflow_search_types",
    columns=(("key", "text"), ("tenant_id", "text"), ("type", "text")),
)
