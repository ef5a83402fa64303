"""The real ``relay`` console script, run with subprocess on a fresh data dir per scenario.

Each ``relay`` start costs about a second (imports), so the scenarios below are independent
(own RELAY_DATA_DIR each) and run concurrently in a thread pool as soon as the first test of
this module needs them; each test then waits for its own scenario and re-raises what failed in it.
Set-up that is not under test (an account, a verified domain...) is done in-process through Admin
on the same data dir, which is exactly what the CLI opens.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from relay.ops.config import load_settings
from relay.secrets import hash_api_key, load_or_create_master_key, verify_api_key
from relay.services.admin import Admin
from relay.store import Store, utcnow
from relay.store import models as m
from relay.store.queue import NewMessage, Outcome
from relay.submission import dkim as rdkim
from relay.vocab import NotFound

_candidate = Path(sys.executable).with_name("relay")
RELAY = str(_candidate) if _candidate.exists() else shutil.which("relay")
_MIGRATE_LOCK = threading.Lock()
KEY_RE = re.compile(r"^rk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}$")
DEPRECATED_POOL = "relay: `relay pool` is deprecated; use `relay upstream` (same commands and options)"


@dataclass
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Proc:
    def __init__(self, args: tuple[str, ...], popen: subprocess.Popen, stdin: str | None) -> None:
        self.args, self.popen, self.stdin = args, popen, stdin

    def wait(self) -> Result:
        out, err = self.popen.communicate(self.stdin, timeout=60)
        return Result(self.args, self.popen.returncode, out, err)


class Cli:
    """``relay`` with RELAY_DATA_DIR=<dir> and RELAY_HOSTNAME=relay.test (and no other RELAY_* variable)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(RELAY_DATA_DIR=str(data_dir), RELAY_HOSTNAME="relay.test")
        self.results: list[Result] = []
        self._local: tuple[Admin, Store] | None = None

    def start(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Proc:
        popen = subprocess.Popen([RELAY, *args], env={**self.env, **(env or {})}, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return Proc(args, popen, input or "")

    def run(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        return self.collect(self.start(*args, input=input, env=env))[0]

    def collect(self, *procs: Proc) -> list[Result]:
        results = [p.wait() for p in procs]
        self.results.extend(results)
        return results

    @property
    def local(self) -> tuple[Admin, Store]:
        """Admin and Store on the same data dir, in this process (for set-up and checks)."""
        if self._local is None:
            settings = load_settings(None, env=self.env)
            store = Store(settings.database_url, node_id="node_test")
            with _MIGRATE_LOCK:  # Alembic keeps its context in module globals: one thread at a time
                store.migrate()
            self._local = Admin(settings, store, load_or_create_master_key(settings.master_key_path, env={})), store
        return self._local

    def db_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(self.data_dir.glob("relay.db*")))

    def close(self) -> None:
        if self._local:
            self._local[1].close()


# -- scenarios ---------------------------------------------------------------------------------------
def cli_accounts(cli: Cli) -> None:
    created = cli.run("account", "create", "acme")
    assert created.code == 0, created
    assert re.fullmatch(r"account acme created \(acc_[0-9a-f]{16}\)\n", created.out)
    acc_id = created.out.split("(")[1].rstrip(")\n")
    admin, store = cli.local
    admin.add_domain("example.com", "acme")
    admin.verify_domain("example.com", trust=True)
    admin.add_alias("app@example.com", account="acme")
    admin.create_key("acme", ["send"])

    listed = cli.run("account", "list", "--json")
    assert listed.code == 0 and listed.err == ""
    data = listed.json()
    assert [(a["id"], a["name"]) for a in data] == [(acc_id, "acme")]
    assert set(data[0]) == {"id", "name", "created_at"}
    assert dt.datetime.fromisoformat(data[0]["created_at"]).tzinfo is not None

    removed = cli.run("account", "remove", "acme", "--json")
    assert removed.code == 0 and removed.json() == {"success": True, "removed": "acme"}
    # the account and what belonged to it are gone
    assert store.directory.list_accounts() == []
    assert (store.directory.list_domains(), store.directory.list_aliases(), store.directory.list_api_keys()) == ([], [], [])


def cli_keys(cli: Cli) -> None:
    admin, store = cli.local
    admin.create_account("acme")
    created = cli.run("key", "create", "--account", "acme", "--scopes", "send:marketing,send", "--name", "ci", "--json")
    assert created.code == 0, created
    data = created.json()
    key = data["key"]
    assert KEY_RE.match(key)
    assert data == {"id": key[:11], "key": key, "account": "acme", "scopes": ["send", "send:marketing"]}

    as_json, as_text = cli.collect(cli.start("key", "list", "--json"), cli.start("key", "list"))
    assert as_json.code == 0 and as_text.code == 0
    [row] = as_json.json()
    assert {k: row[k] for k in ("id", "account_name", "scopes", "name", "revoked")} == {
        "id": key[:11], "account_name": "acme", "scopes": ["send", "send:marketing"], "name": "ci", "revoked": False}
    assert "key_hash" not in row and "key" not in row
    assert re.search(rf"^{key[:11]}\s+acme\s+send,send:marketing\s+ci\s+active$", as_text.out, re.MULTILINE)
    secret = key.split("_", 2)[2]
    for r in (as_json, as_text):
        assert secret not in r.out + r.err and hash_api_key(key) not in r.out + r.err
    assert secret.encode() not in cli.db_bytes()
    rec = store.directory.find_api_key(key[:11])
    assert rec.key_hash == hash_api_key(key) and verify_api_key(key, rec.key_hash)


def cli_domains(cli: Cli) -> None:
    admin, store = cli.local
    admin.create_account("acme")
    added = cli.run("domain", "add", "Example.COM", "--account", "acme")
    assert added.code == 0, added
    rec = store.directory.get_domain("example.com")
    records = admin.dns_records(rec)
    month = utcnow().strftime("%Y%m")
    assert [(r.type, r.name, r.purpose) for r in records] == [
        ("TXT", f"relay-rsa-{month}._domainkey.example.com", "DKIM (rsa)"),
        ("TXT", f"relay-ed-{month}._domainkey.example.com", "DKIM (ed25519)"),
        ("TXT", "_relay-verification.example.com", "domain verification"),
        ("TXT", "example.com", "SPF hint: authorize the upstream relays of your IP pools")]
    for r in records:
        assert f"TXT  {r.name}\n    {r.value}\n    ({r.purpose})" in added.out
    # the published TXT values are the public halves of the stored (encrypted) private keys
    for k, algorithm in zip(rec.keys, ("rsa", "ed25519")):
        pem = admin.master_key.decrypt_str(k.private_key_enc, aad="example.com").encode()
        assert k.algorithm == algorithm and rdkim.dns_txt_value(algorithm, pem) == k.public_txt
    assert records[0].value.startswith("v=DKIM1; k=rsa; p=") and records[1].value.startswith("v=DKIM1; k=ed25519; p=")
    assert records[2].value == f"relay-verification={rec.verification_token}"
    assert records[3].value.startswith("v=spf1 ")
    assert "relay domain verify example.com" in added.out
    assert rec.verified is False

    # a second account's claim blocks nobody; with two unverified claims the operator names the account
    admin.create_account("other")
    assert cli.run("domain", "add", "example.com", "--account", "other").code == 0
    ambiguous = cli.run("domain", "verify", "example.com", "--trust")
    assert (ambiguous.code, ambiguous.err) == (
        2, "relay: domain 'example.com' is claimed by several accounts (acme, other): name one with --account\n")
    verified = cli.run("domain", "verify", "example.com", "--account", "acme", "--trust", "--json")
    assert verified.code == 0, verified
    late = cli.run("domain", "verify", "example.com", "--account", "other", "--trust")
    assert (late.code, late.err) == (1, "relay: domain is already verified by another account\n")
    listed = cli.run("domain", "list", "--json").json()
    assert sorted((d["account_id"] == rec.account_id, d["verified"]) for d in listed) == [(False, False), (True, True)]
    data = verified.json()
    assert (data["name"], data["verified"]) == ("example.com", True)
    assert [(k["selector"], k["algorithm"], k["active"]) for k in data["keys"]] == [
        (f"relay-rsa-{month}", "rsa", True), (f"relay-ed-{month}", "ed25519", True)]
    assert all("private_key_enc" not in k for k in data["keys"])
    assert store.directory.get_domain("example.com").verified is True


def cli_upstreams(cli: Cli) -> None:
    pw_stdin, pw_env = "pw-from-stdin-Zq81!", "pw-from-env-Xk42$"
    by_stdin, by_env = cli.collect(
        cli.start("upstream", "add", "up-stdin", "--ip-pool", "transactional", "--host", "smtp.example.net", "--port", "587",
                  "--encryption", "tls", "--username", "u-stdin", "--password-stdin", "--json",
                  input=pw_stdin + "\n"),
        cli.start("pool", "add", "up-env", "--ip-pool", "marketing", "--host", "127.0.0.1", "--port", "2525",
                  "--encryption", "none", "--username", "u-env", "--password-env", "TEST_UPSTREAM_PW",
                  env={"TEST_UPSTREAM_PW": pw_env}))
    assert by_stdin.code == 0, by_stdin
    row = by_stdin.json()
    assert {k: row[k] for k in ("name", "ip_pool", "host", "port", "encryption", "username")} == {
        "name": "up-stdin", "ip_pool": "transactional", "host": "smtp.example.net", "port": 587,
        "encryption": "tls", "username": "u-stdin"}
    assert "password_enc" not in row and "password" not in row
    assert (by_env.code, by_env.out) == (
        0, "upstream up-env (127.0.0.1:2525, none) added to IP pool marketing of the operator\n")
    # `relay pool` is the deprecated name of `relay upstream`: a note on stderr, then the same command
    # (either one may also note that it created the master key)
    assert DEPRECATED_POOL not in by_stdin.err and by_env.err.splitlines()[0] == DEPRECATED_POOL

    listed, listed_old = cli.collect(cli.start("upstream", "list", "--json"), cli.start("pool", "list", "--json"))
    assert listed.code == 0 and listed_old.code == 0
    assert (listed_old.out, listed_old.err) == (listed.out, DEPRECATED_POOL + "\n")
    rows = listed.json()
    assert [(r["name"], r["ip_pool"], r["username"]) for r in rows] == [
        ("up-env", "marketing", "u-env"), ("up-stdin", "transactional", "u-stdin")]
    assert all(not ({"password", "password_enc"} & set(r)) for r in rows)
    db = cli.db_bytes()
    for pw in (pw_stdin, pw_env):
        for r in cli.results:
            assert pw not in r.out and pw not in r.err
        assert pw.encode() not in db
    admin, store = cli.local
    assert admin.upstream_password(store.directory.get_upstream("up-stdin")) == pw_stdin
    assert admin.upstream_password(store.directory.get_upstream("up-env")) == pw_env

    removed, missing = cli.collect(cli.start("upstream", "remove", "up-env", "--json"),
                                   cli.start("pool", "remove", "nowhere"))
    assert removed.code == 0 and removed.json() == {"success": True, "removed": "up-env"}
    assert (missing.code, missing.err) == (1, DEPRECATED_POOL + "\nrelay: no upstream 'nowhere'\n")
    assert [u.name for u in store.directory.list_upstreams()] == ["up-stdin"]


def cli_aliases(cli: Cli) -> None:
    admin, store = cli.local
    admin.create_account("acme")
    admin.add_domain("example.com", "acme")
    refused = cli.run("alias", "add", "app@example.com", "--account", "acme")
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == "relay: 'example.com' is not a verified domain of account 'acme'\n"
    assert store.directory.find_alias("app@example.com") is None and store.queue.list_messages() == []

    admin.verify_domain("example.com", trust=True)
    added = cli.run("alias", "add", "App@Example.com", "--account", "acme", "--ip-pool", "transactional",
                    "--name", "App", "--json")
    assert added.code == 0, added
    data = added.json()
    assert {k: data["alias"][k] for k in ("email", "name", "ip_pool", "is_default", "verified")} == {
        "email": "app@example.com", "name": "App", "ip_pool": "transactional", "is_default": False, "verified": False}
    qid = data["verification_queue_id"]
    assert re.fullmatch(r"msg_[0-9a-f]{16}", qid)
    view = store.queue.show(qid)
    assert (view.source, view.mail_from, [r.address for r in view.recipients]) == (
        "system", "postmaster@relay.test", ["app@example.com"])
    text = email.message_from_bytes(store.queue.body(qid), policy=email.policy.default).get_content()
    assert re.search(r"http://127\.0\.0\.1:8025/api/v1/aliases/verify/[A-Za-z0-9_-]{43}\b", text)

    # an expired link: `relay alias resend` sends a new one (the old one stops working)
    old_token = store.directory.alias_by_token(_link_token(store, qid))
    assert old_token is not None
    with store.sessions.begin() as s:
        s.execute(sa.update(m.Alias).values(verification_sent_at=utcnow() - dt.timedelta(days=8)))
    resent = cli.run("alias", "resend", "app@example.com", "--json")
    assert resent.code == 0, resent
    new_qid = resent.json()["verification_queue_id"]
    assert new_qid != qid and store.directory.alias_by_token(_link_token(store, qid)) is None
    assert store.directory.alias_by_token(_link_token(store, new_qid))[0].email == "app@example.com"

    verified = cli.run("alias", "verify", "app@example.com", "--json")
    assert verified.code == 0 and (verified.json()["email"], verified.json()["verified"]) == ("app@example.com", True)
    listed = cli.run("alias", "list", "--json")
    assert [(a["email"], a["ip_pool"], a["verified"]) for a in listed.json()] == [("app@example.com", "transactional", True)]
    # the rules of DELETE /api/v1/aliases/{id} (relay.services.admin): the account's only verified alias stays
    refused, refused_json = cli.collect(cli.start("alias", "remove", "app@example.com"),
                                        cli.start("alias", "remove", "app@example.com", "--json"))
    assert (refused.code, refused.out, refused.err) == (
        1, "", "relay: Cannot delete the only remaining verified alias\n")
    assert refused_json.code == 1 and refused_json.json() == {
        "success": False, "error": "Cannot delete the only remaining verified alias"}
    admin.add_alias("news@example.com", account="acme")
    removed = cli.run("alias", "remove", "News@example.com", "--json")
    assert removed.code == 0 and removed.json() == {"success": True, "removed": "News@example.com"}
    assert [a.email for a in store.directory.list_aliases()] == ["app@example.com"]


def _link_token(store: Store, qid: str) -> str:
    text = email.message_from_bytes(store.queue.body(qid), policy=email.policy.default).get_content()
    found = re.search(r"/api/v1/aliases/verify/([A-Za-z0-9_-]{43})\b", text)
    assert found, text
    return found.group(1)


def cli_queue(cli: Cli) -> None:
    admin, store = cli.local
    admin.create_account("acme")
    admin.add_domain("example.com", "acme")
    admin.verify_domain("example.com", trust=True)
    _, qid_v = admin.add_alias("app@example.com", account="acme")
    now = utcnow()
    qid_d = "msg_00000000000000d1"
    store.queue.enqueue([NewMessage(id=qid_d, ip_pool="default", mail_from="app@example.com",
                                    body=b"From: app@example.com\r\nSubject: later\r\n\r\nx\r\n",
                                    recipients=["r@dest.org"], created_at=now, expires_at=now + dt.timedelta(days=5),
                                    subject="later")])
    store.queue.record_outcomes([Outcome(qid_d, "r@dest.org", "deferred", 451, "4.3.0 busy", "up1",
                                         next_attempt_at=now + dt.timedelta(hours=1))])

    listed, shown = cli.collect(cli.start("queue", "list", "--json"), cli.start("queue", "show", qid_d, "--json"))
    assert listed.code == 0 and shown.code == 0
    assert sorted((m["id"], m["state"], m["mail_from"], tuple((r["address"], r["state"]) for r in m["recipients"]))
                  for m in listed.json()) == sorted([
                      (qid_v, "queued", "postmaster@relay.test", (("app@example.com", "queued"),)),
                      (qid_d, "deferred", "app@example.com", (("r@dest.org", "deferred"),))])
    detail = shown.json()
    assert (detail["id"], detail["subject"], detail["mail_from"]) == (qid_d, "later", "app@example.com")
    assert [(r["address"], r["state"], r["attempts"], r["last_code"], r["last_reply"]) for r in detail["recipients"]] == [
        ("r@dest.org", "deferred", 1, 451, "4.3.0 busy")]
    assert [(e["type"], e["recipient"]) for e in detail["events"]] == [("accepted", "r@dest.org"), ("deferred", "r@dest.org")]

    retried, deleted = cli.collect(cli.start("queue", "retry", qid_d, "--json"),
                                   cli.start("queue", "delete", qid_v, "--json"))
    assert retried.code == 0 and retried.json() == {"success": True, "recipients": 1}
    assert store.queue.show(qid_d).recipients[0].next_attempt_at <= utcnow()
    assert deleted.code == 0 and deleted.json() == {"success": True, "deleted": qid_v}
    with pytest.raises(NotFound):
        store.queue.show(qid_v)
    assert [m.id for m in store.queue.list_messages()] == [qid_d]


def cli_unknown_config_key(cli: Cli) -> None:
    cfg = cli.data_dir / "relay.toml"
    cfg.write_text('hostname = "relay.test"\n\n[smtp]\nsubmision = "127.0.0.1:2587"\n')
    failed = cli.run("--config", str(cfg), "account", "list", "--json")
    assert failed.code == 2 and failed.err == ""
    error = failed.json()
    assert error["success"] is False
    assert f"config: smtp.submision: unknown key (from file {cfg})" in error["error"]
    assert not (cli.data_dir / "relay.db").exists()


# -- running them ----------------------------------------------------------------------------------------
SCENARIOS: dict[str, Callable[[Cli], None]] = {
    fn.__name__.removeprefix("cli_"): fn
    for fn in (cli_accounts, cli_keys, cli_domains, cli_upstreams, cli_aliases, cli_queue, cli_unknown_config_key)
}


def _run(fn: Callable[[Cli], None], data_dir: Path) -> None:
    cli = Cli(data_dir)
    try:
        fn(cli)
    finally:
        cli.close()


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory) -> dict[str, Future]:
    assert RELAY, "the relay console script is not installed"
    wanted = {item.name.removeprefix("test_") for item in request.session.items
              if getattr(item, "module", None) is sys.modules[__name__]}
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS), thread_name_prefix="cli")
    futures = {name: pool.submit(_run, fn, tmp_path_factory.mktemp(f"cli-{name}"))
               for name, fn in SCENARIOS.items() if name in wanted}
    yield futures
    pool.shutdown(wait=True)


def test_accounts(scenarios):
    scenarios["accounts"].result()


def test_keys(scenarios):
    scenarios["keys"].result()


def test_domains(scenarios):
    scenarios["domains"].result()


def test_upstreams(scenarios):
    scenarios["upstreams"].result()


def test_aliases(scenarios):
    scenarios["aliases"].result()


def test_queue(scenarios):
    scenarios["queue"].result()


def test_unknown_config_key(scenarios):
    scenarios["unknown_config_key"].result()
