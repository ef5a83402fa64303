"""``relay suppression``, ``relay quota`` and ``relay route explain``, run in-process with click's
CliRunner against a data dir provisioned through Admin (the console script itself is covered by
tests/gateway/test_cli.py). Each command is checked in text and ``--json`` form, with its exit codes."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from policies.quota_rules import Rate
from policies.quota_store import Charge, QuotaStore
from relay.cli.main import main
from relay.ops.config import load_settings
from relay.secrets import load_or_create_master_key
from relay.services.admin import Admin
from relay.store import Store, utcnow


@pytest.fixture
def site(tmp_path):
    """A config file with the three built-ins enabled, an account with a key, an alias and two upstreams."""
    config = tmp_path / "relay.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nhostname = "relay.test"\n'
                      '[policies]\nenabled = ["limits", "suppression", "quota"]\n'
                      '[policies.quota]\nkey_daily = 1000\n[policies.suppression]\ncache_ttl = 0\n')
    settings = load_settings(config, env={})
    store = Store(settings.database_url)
    store.migrate()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    admin = Admin(settings, store, load_or_create_master_key(settings.master_key_path, env={}))
    admin.create_account("acme")
    admin.create_account("other")
    admin.add_domain("example.com", "acme")
    admin.verify_domain("example.com", trust=True)
    admin.add_upstream(name="backup", ip_pool="default", host="127.0.0.1", port=2526, encryption="none", priority=5)
    admin.add_upstream(name="primary", ip_pool="default", host="127.0.0.1", port=2525, encryption="none")
    admin.add_alias("app@example.com", account="acme")
    admin.verify_alias(email="app@example.com")
    key, rec = admin.create_key("acme", ["send"])
    yield SimpleNamespace(config=config, store=store, key=key, key_id=rec.id, tmp=tmp_path,
                          account_id=store.directory.get_account("acme").id)
    store.close()


def relay(site, *args: str, input: str | None = None):
    result = CliRunner().invoke(main, ["--config", str(site.config), *args], input=input, catch_exceptions=False)
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr,
                           json=lambda: json.loads(result.stdout))


def test_suppression_add_list_remove(site):
    r = relay(site, "suppression", "add", "Gone@Dest.org", "left@dest.org", "--account", "acme",
              "--reason", "hard_bounce", "--detail", "550 5.1.1", "--json")
    assert r.code == 0 and r.json() == {"success": True, "account": "acme", "added": 2, "updated": 0,
                                        "emails": ["gone@dest.org", "left@dest.org"]}
    r = relay(site, "suppression", "add", "left@dest.org", "--account", "acme", "--reason", "unsubscribe",
              "--expires", "30d")
    assert (r.code, r.out) == (0, "0 added, 1 updated on the suppression list of acme\n")
    relay(site, "suppression", "add", "old@dest.org", "--account", "acme", "--expires", "2020-01-01")
    r = relay(site, "suppression", "list", "--account", "acme", "--json")
    entries = {e["email"]: e for e in r.json()}
    assert set(entries) == {"gone@dest.org", "left@dest.org"}  # the expired one is hidden
    assert entries["gone@dest.org"]["reason"] == "hard_bounce" and entries["gone@dest.org"]["detail"] == "550 5.1.1"
    expires = dt.datetime.fromisoformat(entries["left@dest.org"]["expires_at"])
    assert dt.timedelta(days=29) < expires - utcnow() <= dt.timedelta(days=30)
    r = relay(site, "suppression", "list", "--account", "acme", "--all")
    assert r.out.splitlines()[0].split() == ["EMAIL", "REASON", "ADDED", "EXPIRES", "DETAIL"]
    assert len(r.out.splitlines()) == 4
    assert [e["email"] for e in relay(site, "suppression", "list", "--account", "acme", "--reason",
                                      "unsubscribe", "--json").json()] == ["left@dest.org"]
    assert relay(site, "suppression", "list", "--account", "other", "--json").json() == []

    r = relay(site, "suppression", "remove", "GONE@dest.org", "--account", "acme", "--json")
    assert r.code == 0 and r.json()["removed"] == 1
    r = relay(site, "suppression", "remove", "gone@dest.org", "--account", "acme")
    assert (r.code, r.err) == (1, "relay: gone@dest.org is not on the suppression list\n")
    r = relay(site, "suppression", "add", "not-an-address", "--account", "acme", "--json")
    assert r.code == 2 and r.json() == {"success": False, "error": "invalid email address 'not-an-address'"}
    r = relay(site, "suppression", "add", "a@dest.org", "--account", "nobody")
    assert r.code == 1 and "nobody" in r.err
    r = relay(site, "suppression", "add", "a@dest.org", "--account", "acme", "--expires", "soon")
    assert r.code == 2 and "invalid expiry 'soon'" in r.err


def test_suppression_import_and_export_round_trip(site):
    csv_in = site.tmp / "in.csv"
    csv_in.write_text("email,reason,expires_at,detail\n"
                      "a@dest.org,complaint,,fbl report\n"
                      "B@dest.org,,2099-01-01T00:00:00Z,\n"
                      "# a comment\n\n"
                      "c@dest.org,unsubscribe,,\n")
    r = relay(site, "suppression", "import", str(csv_in), "--account", "acme", "--json")
    assert r.code == 0 and r.json() == {"success": True, "account": "acme", "added": 3, "updated": 0}
    # headerless rows from stdin; the default reason for rows without one
    r = relay(site, "suppression", "import", "-", "--account", "acme", "--reason", "manual",
              input="d@dest.org\na@dest.org,hard_bounce\n")
    assert (r.code, r.out) == (0, "1 added, 1 updated on the suppression list of acme\n")
    # all or nothing: a bad row stops the import and is named
    r = relay(site, "suppression", "import", "-", "--account", "acme", input="e@dest.org\nf@dest.org,spam\n")
    assert r.code == 2 and "row 2: invalid reason 'spam'" in r.err
    assert "e@dest.org" not in {e["email"] for e in relay(site, "suppression", "list", "--account", "acme",
                                                          "--json").json()}

    out = site.tmp / "out.csv"
    r = relay(site, "suppression", "export", "--account", "acme", "--output", str(out))
    assert (r.code, r.out) == (0, f"4 entries written to {out}\n")
    lines = out.read_text().splitlines()
    assert lines[0] == "email,reason,expires_at,detail,created_at"
    rows = {line.split(",")[0]: line.split(",")[1:4] for line in lines[1:]}
    assert rows == {"a@dest.org": ["hard_bounce", "", ""], "b@dest.org": ["manual", "2099-01-01T00:00:00+00:00", ""],
                    "c@dest.org": ["unsubscribe", "", ""], "d@dest.org": ["manual", "", ""]}
    assert relay(site, "suppression", "export", "--account", "acme").out.strip() == out.read_text().strip()
    assert len(relay(site, "suppression", "export", "--account", "acme", "--json").json()) == 4
    # what export writes, import reads back
    r = relay(site, "suppression", "import", str(out), "--account", "other")
    assert (r.code, r.out) == (0, "4 added, 0 updated on the suppression list of other\n")
    theirs = relay(site, "suppression", "list", "--account", "other", "--json").json()
    ours = relay(site, "suppression", "list", "--account", "acme", "--json").json()

    def strip(es):
        return sorted((e["email"], e["reason"], e["expires_at"], e["detail"]) for e in es)

    assert strip(theirs) == strip(ours)


def test_quota_set_show_remove(site):
    r = relay(site, "quota", "set", "--account", "acme", "--rate", "10/m", "--daily", "500", "--json")
    assert r.code == 0 and r.json() == {
        "success": True, "target": f"account:{site.account_id}", "kind": "account", "label": "acme",
        "rate": "10/m", "daily": 500, "warmup": None, "warmup_start": None}
    r = relay(site, "quota", "set", "--account", "acme", "--key", site.key_id, "--daily", "20")
    assert (r.code, r.out) == (0, f"quota for key {site.key_id}: rate default, daily 20\n")
    r = relay(site, "quota", "set", "--account", "acme", "--alias", "app@example.com", "--rate", "unlimited")
    assert (r.code, r.out) == (0, "quota for alias app@example.com: rate unlimited, daily default\n")
    r = relay(site, "quota", "set", "--pool", "default", "--warmup", "1:50,2:100,5:1000")
    assert (r.code, r.out) == (0, "quota for pool default: rate default, daily default, warm-up 1:50,2:100,5:1000\n")
    r = relay(site, "quota", "set", "--account", "acme", "--pool", "default", "--daily", "300")
    assert (r.code, r.out) == (0, "quota for account pool acme in default: rate default, daily 300\n")

    # usage, as counted by the policy
    q = QuotaStore(site.store.sessions, site.store.reads)
    now = utcnow()
    assert q.reserve([Charge(f"account:{site.account_id}", 3, now.date(), 500, Rate(10, 60)),
                      Charge("pool:default", 3, now.date(), 50, None)], now) is None
    r = relay(site, "quota", "show", "--account", "acme", "--json")
    assert r.code == 0 and r.json()["enforced"] is True
    show = {t["target"]: t for t in r.json()["targets"]}
    acct = show[f"account:{site.account_id}"]
    assert (acct["rate"], acct["available_now"], acct["daily"], acct["used_today"], acct["remaining_today"]) == \
        ("10/m", 7, 500, 3, 497)
    assert (show[f"key:{site.key_id}"]["daily"], show[f"key:{site.key_id}"]["source"]) == (20, "set")
    pool = show["pool:default"]
    assert (pool["daily"], pool["used_today"], pool["warmup_day"], pool["warmup_cap"]) == (50, 3, 1, 50)
    assert pool["warmup_schedule"] == [[1, 50], [2, 100], [5, 1000]]  # the dashboard draws the whole warm-up
    assert show[f"account_pool:{site.account_id}/default"]["daily"] == 300
    alias = next(t for t in show.values() if t["kind"] == "alias")
    assert alias["rate"] is None and alias["label"] == "app@example.com"
    text = relay(site, "quota", "show", "--account", "acme").out.splitlines()
    assert text[0].split() == ["TARGET", "KIND", "FROM", "RATE", "AVAILABLE", "DAILY", "USED", "TODAY", "WARM-UP"]
    assert any(line.split()[:8] == ["default", "pool", "set", "-", "-", "50", "3", "day"] for line in text)
    assert [t["target"] for t in relay(site, "quota", "show", "--pool", "default", "--json").json()["targets"]] == \
        [f"account_pool:{site.account_id}/default", "pool:default"]

    # the key falls back to the [policies.quota] default once its own limit is removed
    r = relay(site, "quota", "remove", "--account", "acme", "--key", site.key_id)
    assert (r.code, r.out) == (0, f"quota for key {site.key_id} removed\n")
    show = {t["target"]: t for t in relay(site, "quota", "show", "--account", "acme", "--json").json()["targets"]}
    assert (show[f"key:{site.key_id}"]["daily"], show[f"key:{site.key_id}"]["source"]) == (1000, "default")


BAD_QUOTA_SET = [
    (["--account", "acme", "--rate", "10/x"], 2, "invalid --rate '10/x': expected N/s, N/m or N/h"),
    (["--account", "acme", "--daily", "-3"], 2, "invalid --daily '-3'"),
    (["--account", "acme"], 2, "nothing to set"),
    (["--account", "acme", "--warmup", "1:5"], 2, "--warmup and --warmup-start apply to IP pools only"),
    (["--pool", "default", "--warmup", "3:5,2:9"], 2, "invalid --warmup '3:5,2:9'"),
    (["--pool", "default", "--warmup-start", "someday"], 2, "invalid --warmup-start 'someday'"),
    (["--pool", "nowhere", "--daily", "5"], 1, "no IP pool 'nowhere'"),
    (["--daily", "5"], 2, "--account is required"),
    (["--account", "other", "--key", "KEY", "--daily", "5"], 1, "no API key"),
    (["--account", "acme", "--alias", "nobody@example.com", "--daily", "5"], 1, "no alias 'nobody@example.com'"),
    (["--account", "acme", "--key", "KEY", "--pool", "default", "--daily", "5"], 2, "at most one of"),
]


def test_quota_set_refuses_bad_input(site):
    for args, code, message in BAD_QUOTA_SET:
        args = [site.key_id if a == "KEY" else a for a in args]
        r = relay(site, "quota", "set", *args)
        assert r.code == code and message in r.err, (args, r.code, r.err)
    assert relay(site, "quota", "show", "--json").json()["targets"] == []


def test_route_explain_shows_alias_pool_upstreams_and_every_verdict(site):
    supp = relay(site, "suppression", "add", "gone@dest.org", "--account", "acme", "--reason", "hard_bounce")
    assert supp.code == 0
    assert relay(site, "quota", "set", "--account", "acme", "--key", site.key_id, "--daily", "2").code == 0
    r = relay(site, "route", "explain", "--key", site.key_id, "--from", "app@example.com",
              "--to", "a@dest.org", "--to", "gone@dest.org", "--to", "b@dest.org", "--to", "c@dest.org", "--json")
    assert r.code == 0, r.err
    e = r.json()
    assert (e["key_id"], e["account"], e["sender"], e["ip_pool"], e["pool_day"]) == \
        (site.key_id, "acme", "app@example.com", "default", 1)
    assert e["alias"]["email"] == "app@example.com"
    assert [(u["name"], u["priority"]) for u in e["upstreams"]] == [("primary", 0), ("backup", 5)]
    assert e["policies"] == ["limits", "suppression", "quota"]
    assert e["mail"]["reply"] == "250 2.1.0 Sender OK"
    steps = {s["address"]: s for s in e["recipients"]}
    verdicts = {a: {v["policy"]: (v["action"], v["reply"]) for v in s["verdicts"]} for a, s in steps.items()}
    assert steps["a@dest.org"]["reply"] == "250 2.1.5 Recipient OK"
    assert verdicts["a@dest.org"] == {"limits": ("no opinion", None), "suppression": ("no opinion", None),
                                      "quota": ("no opinion", None)}
    assert steps["gone@dest.org"]["reply"] == "550 5.7.1 Recipient address rejected"
    assert verdicts["gone@dest.org"]["suppression"] == ("reject", "550 5.7.1 Recipient address rejected")
    assert steps["b@dest.org"]["accepted"] is True
    assert steps["c@dest.org"]["reply"] == "452 4.5.3 Too many recipients, try again later"
    assert verdicts["c@dest.org"]["quota"] == ("tempfail", "452 4.5.3 Too many recipients, try again later")
    # nothing was counted, nothing was sent
    now = utcnow()
    q = QuotaStore(site.store.sessions, site.store.reads)
    assert q.usage([f"key:{site.key_id}"], now.date(), now)[f"key:{site.key_id}"].used_today == 0
    assert site.store.queue.list_messages() == [] or all(m.source == "system" for m in site.store.queue.list_messages())

    # text form, with the whole key; a refused sender
    r = relay(site, "route", "explain", "--key", site.key, "--from", "app@example.com", "--to", "gone@dest.org")
    lines = r.out.splitlines()
    assert r.code == 0 and lines[:2] == [f"key         {site.key_id} (account acme; scopes send)",
                                         "alias       app@example.com (" + e["alias"]["id"] + ")"]
    assert "upstreams   1. primary  127.0.0.1:2525  none  priority 0  weight 1" in lines
    assert "RCPT TO <gone@dest.org>: 550 5.7.1 Recipient address rejected" in lines
    assert "    suppression  reject: 550 5.7.1 Recipient address rejected  (suppressed: hard_bounce)" in lines
    r = relay(site, "route", "explain", "--key", site.key_id, "--from", "someone@else.org", "--to", "a@dest.org",
              "--json")
    assert r.json()["mail"]["reply"] == "553 5.7.1 Sender address not allowed for this login"
    assert r.json()["recipients"] == [] and r.json()["mail"]["verdicts"] == []
    r = relay(site, "route", "explain", "--key", "rk_00000000", "--from", "app@example.com", "--to", "a@dest.org")
    assert (r.code, r.err) == (1, "relay: no API key 'rk_00000000'\n")


def test_migration_0002_matches_the_models(db_url):
    import warnings

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from relay.store import models as m

    store = Store(db_url)
    store.migrate()
    with store.engine.connect() as conn, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expression indexes cannot be reflected on SQLite
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), m.Base.metadata)
    store.close()
    assert diff == []

