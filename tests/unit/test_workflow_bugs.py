"""Bug fingerprints: what must group together, what must stay apart, classes, and regrouping by version."""

from __future__ import annotations

import pytest

from schemas.bugrules import (
    classify,
    compare_groupings,
    fingerprint,
    normalise_message,
    normalise_path,
)
from schemas.workflow import BugLogged, bug_stream_id, workflow_stream_id

SAME = [
    # ids, addresses, numbers, uuids, ips, timestamps and temp paths
    (("Undefined variable: foo at 0x7ffe1234 (request 1817)", "app/a.py", 42),
     ("Undefined variable: foo at 0x55d0aa21 (request 99)", "app/a.py", 42)),
    (("User 3fa85f64-5717-4562-b3fc-2c963f66afa6 not found", "app/u.py", 7),
     ("User 9b2e1c30-0000-4000-8000-000000000001 not found", "app/u.py", 7)),
    (("connect to 10.0.0.12:5432 failed at 2025-01-13T14:30:22Z", "db.py", 1),
     ("connect to 192.168.1.9:6543 failed at 2026-02-01 08:00:00", "db.py", 1)),
    (("cannot open /tmp/pytest-17/abc/data.json", "io.py", 3), ("cannot open /tmp/xyz/other.json", "io.py", 3)),
    (("Could not find 'John Doe' in the directory", "d.py", 5), ("Could not find 'Ana María' in the directory", "d.py", 5)),
    # the same file under different deployment roots
    (("boom", "/srv/api/app/models.py", 10), ("boom", "/app/app/models.py", 10)),
    (("boom", "/usr/src/app/app/models.py", 10), ("boom", "./app/models.py", 10)),
    (("boom", "/var/www/html/app/models.py", 10), ("boom", "/opt/shop/app/models.py", 10)),
]

APART = [
    (("Undefined variable: foo", "a.py", 42), ("Undefined variable: bar", "a.py", 42)),
    (('duplicate key value violates unique constraint "users_email_key"', "r.py", 9),
     ('duplicate key value violates unique constraint "orders_pkey"', "r.py", 9)),
    (("NameError: name 'foo' is not defined", "a.py", 42), ("NameError: name 'foo' is not defined", "a.py", 43)),
    (("boom", "app/models.py", 10), ("boom", "app/views.py", 10)),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_messages_differing_only_in_ids_addresses_numbers_and_roots_group_together(a: tuple, b: tuple) -> None:
    assert fingerprint(*a) == fingerprint(*b)


@pytest.mark.parametrize(("a", "b"), APART)
def test_different_variable_constraint_line_or_file_stay_apart(a: tuple, b: tuple) -> None:
    assert fingerprint(*a) != fingerprint(*b)


def test_configured_project_root_and_first_stack_frame() -> None:
    assert normalise_path("/home/ci/build/app/x.py", "/home/ci/build") == "app/x.py"
    stack_a = 'Traceback (most recent call last):\n  File "/srv/api/app/x.py", line 12, in run\n    go()\n'
    stack_b = 'Traceback (most recent call last):\n  File "/app/app/x.py", line 99, in run\n    go()\n'
    stack_c = 'Traceback (most recent call last):\n  File "/app/app/y.py", line 99, in walk\n'
    assert fingerprint("boom", "x.py", 1, stack_a) == fingerprint("boom", "x.py", 1, stack_b)
    assert fingerprint("boom", "x.py", 1, stack_a) != fingerprint("boom", "x.py", 1, stack_c)


@pytest.mark.parametrize(("message", "kind"), [
    ("SyntaxError: invalid syntax", "syntax"),
    ("TypeError: unsupported operand type(s) for +: 'int' and 'str'", "type"),
    ("NameError: name 'foo' is not defined", "name"),
    ("Undefined variable: foo", "name"),
    ("ModuleNotFoundError: No module named 'requests'", "import"),
    ('psycopg.errors.UniqueViolation: duplicate key value violates unique constraint "users_email_key"', "database"),
    ("ConnectionRefusedError: [Errno 111] Connection refused", "network"),
    ("httpx.ReadTimeout: timed out", "timeout"),
    ("PermissionError: [Errno 13] Permission denied: '/etc/shadow'", "permission"),
    ("MemoryError: out of memory", "memory"),
    ("AssertionError: expected 3 but got 4", "assertion"),
    ("RuntimeError: something odd happened", "runtime"),
])
def test_classification(message: str, kind: str) -> None:
    assert classify(message) == kind


def test_regroup_under_version_two_merges_lines_and_splits_status_codes() -> None:
    reports = [("boom", "a.py", 1), ("boom", "a.py", 2), ("HTTP status 404 from api", "c.py", 5),
               ("HTTP status 500 from api", "c.py", 5), ("other", "b.py", 3)]
    pairs = [(fingerprint(*r, version=1), fingerprint(*r, version=2)) for r in reports]
    change = compare_groupings(pairs)
    assert (change.groups_before, change.groups_after) == (4, 4)
    assert [sorted(v) for v in change.merges.values()] == [sorted({pairs[0][0], pairs[1][0]})]
    assert change.splits == {pairs[2][0]: sorted({pairs[2][1], pairs[3][1]})}
    assert normalise_message("HTTP status 404 after 3 tries", 2) == "HTTP status 404 after # tries"


def test_bug_stream_follows_the_fingerprint_of_the_rules_version() -> None:
    logged = BugLogged(task_code="TSK-1", message="boom", file="/app/a.py", line=1)
    assert workflow_stream_id("acme", logged) == bug_stream_id("acme", fingerprint("boom", "a.py", 1))
    assert workflow_stream_id("acme", BugLogged(message="boom", file="a.py", line=1, rules_version=2)) == bug_stream_id(
        "acme", fingerprint("boom", "a.py", 1, version=2))


def test_version_three_groups_numbers_inside_quoted_names_and_keeps_names_apart() -> None:
    stack = ('Traceback (most recent call last):\n  File "/app/shop/orders.py", line 88, in load\n'
             "    return cache[key]\n")
    a = ("KeyError: 'order_5531'", "/app/shop/orders.py", 88, stack)
    b = ("KeyError: 'order_77'", "/app/shop/orders.py", 88, stack)
    # v1 and v2 keep the split as it was (replay regroups old events by the version they name).
    assert fingerprint(*a, version=1) != fingerprint(*b, version=1)
    assert fingerprint(*a, version=2) != fingerprint(*b, version=2)
    assert fingerprint(*a, version=3) == fingerprint(*b, version=3)
    assert normalise_message("KeyError: 'order_5531'", 3) == "KeyError: 'order_#'"
    assert normalise_message('no column "col2v10" in "t_2024"', 3) == 'no column "col#v#" in "t_#"'
    # Names that differ in letters stay two bugs; quoted data and everything else normalise as in v2.
    assert fingerprint("KeyError: 'order_1'", "a.py", 1, version=3) != fingerprint("KeyError: 'invoice_1'", "a.py", 1,
                                                                                   version=3)
    assert fingerprint("HTTP status 404 for 'item_9'", "c.py", 5, version=3) != fingerprint(
        "HTTP status 500 for 'item_9'", "c.py", 5, version=3)
    assert normalise_message("Could not find 'John Doe 2'", 3) == "Could not find STRING"
    # Regrouping a v2 tenant under v3 merges the split bug and nothing else.
    reports = [a[:3], b[:3], ("KeyError: 'invoice_1'", "/app/shop/orders.py", 88)]
    change = compare_groupings([(fingerprint(*r, version=2), fingerprint(*r, version=3)) for r in reports])
    assert (change.groups_before, change.groups_after, change.splits) == (3, 2, {})
    assert workflow_stream_id("acme", BugLogged(message=a[0], file=a[1], line=a[2], rules_version=3)) == (
        bug_stream_id("acme", fingerprint(*a[:3], version=3)))
