"""``relay key create``: the key alone on stdout, so that ``KEY=$(relay key create ...)`` is the key."""

from __future__ import annotations

import json
import re

KEY_RE = re.compile(r"^rk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")


def test_the_key_alone_on_stdout_and_the_note_on_stderr(relay):
    assert relay("account", "create", "acme").exit_code == 0
    r = relay("key", "create", "--account", "acme", "--scopes", "send")
    assert r.exit_code == 0
    assert KEY_RE.match(r.stdout.rstrip("\n")) and r.stdout.count("\n") == 1  # KEY=$(...) is exactly the key
    key_id = r.stdout[:11]
    assert r.stderr == f"relay: key {key_id} for account acme; shown once, store it now\n"


def test_under_json_the_note_is_not_printed(relay):
    relay("account", "create", "acme")
    r = relay("key", "create", "--account", "acme", "--scopes", "send", "--json")
    assert r.exit_code == 0 and r.stderr == ""
    assert KEY_RE.match(json.loads(r.stdout)["key"])
