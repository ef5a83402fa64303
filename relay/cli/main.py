"""The ``relay`` command: serve, and the sysadmin's verbs. Every command takes ``--json``."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import sys
from typing import Any, Callable

import click

from relay.vocab import ConfigError, Conflict, Invalid, NotFound

log = logging.getLogger("relay")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(x) for x in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return obj


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.config = config
        self._settings = None
        self._store = None
        self._admin = None
        self.as_json = False  # the command's --json: long work stays quiet (relay.cli.progress)

    @property
    def settings(self):
        if self._settings is None:
            from relay.ops.config import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    @property
    def store(self):
        if self._store is None:
            from relay.store import Store, node_id

            s = self.settings
            self._store = Store(s.database_url, node_id=node_id(s.data_dir))
            self._store.migrate()
        return self._store

    @property
    def admin(self):
        if self._admin is None:
            from relay.services.admin import Admin
            from relay.secrets import load_or_create_master_key

            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
            self._admin = Admin(self.settings, self.store, load_or_create_master_key(self.settings.master_key_path))
        return self._admin


def command(group: click.Group, name: str, **kw: Any) -> Callable:
    """A subcommand with ``--json``, and errors turned into a clear message and exit code."""

    def deco(fn: Callable) -> Callable:
        @group.command(name, **kw)
        @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
        @click.pass_obj
        @functools.wraps(fn)
        def wrapper(ctx: Ctx, as_json: bool, **kwargs: Any) -> None:
            ctx.as_json = as_json
            try:
                result = fn(ctx, **kwargs)
            except (NotFound, Conflict, Invalid, ConfigError) as exc:
                code = 2 if isinstance(exc, (Invalid, ConfigError)) else 1
                if as_json:
                    click.echo(json.dumps({"success": False, "error": str(exc)}))
                else:
                    click.echo(f"relay: {exc}", err=True)
                sys.exit(code)
            if result is None:
                return
            data, text, *rest = result
            if as_json:
                click.echo(json.dumps(_jsonable(data), indent=2))
            elif text:
                click.echo(text, err=bool(rest and rest[0]))
            if rest and rest[0]:
                sys.exit(rest[0])

        return wrapper

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", envvar="RELAY_CONFIG", type=click.Path(dir_okay=False),
              help="TOML config file (default: env RELAY_CONFIG, else built-in defaults).")
@click.pass_context
def main(click_ctx: click.Context, config: str | None) -> None:
    """Relay: a self-hosted SMTP submission gateway."""
    click_ctx.obj = Ctx(config)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    cols = [header] + [[str(c) if c is not None else "-" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cols)


# -- serve --------------------------------------------------------------------------------------
@main.command("serve")
@click.option("--json", "as_json", is_flag=True, help="Log as JSON lines (same as [log] format = \"json\").")
@click.pass_obj
def serve_cmd(ctx: Ctx, as_json: bool) -> None:
    """Run the gateway: SMTP listeners, HTTP API and delivery, in one process."""
    from relay.ops.logs import setup_logging
    from relay.gateway import run

    try:
        settings = ctx.settings
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    setup_logging(settings.log.level, "json" if as_json else settings.log.format)
    try:
        sys.exit(run(settings))
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"relay: cannot start: {exc}", err=True)
        sys.exit(1)


@main.command("health")
@click.option("--ready", is_flag=True, help="Ask /readyz (listeners, store, upstreams) instead of /healthz.")
@click.pass_obj
def health_cmd(ctx: Ctx, ready: bool) -> None:
    """Ask the running gateway's API whether it is alive (exit 0) or not (exit 1): the HEALTHCHECK."""
    import urllib.error
    import urllib.request

    from relay.ops.config import parse_hostport

    listen = ctx.settings.api.listen
    if not listen:
        click.echo("relay: the API listener is disabled (api.listen)", err=True)
        sys.exit(2)
    host, port = parse_hostport(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{'[%s]' % host if ':' in host else host}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback API
            click.echo(resp.read().decode())
            sys.exit(0)
    except urllib.error.HTTPError as exc:
        click.echo(exc.read().decode() or str(exc), err=True)
    except OSError as exc:
        click.echo(f"relay: {url}: {exc}", err=True)
    sys.exit(1)


# -- accounts -------------------------------------------------------------------------------------
@main.group("account")
def account() -> None:
    """Accounts: who sends."""


@command(account, "create")
@click.argument("name")
def account_create(ctx: Ctx, name: str):
    rec = ctx.admin.create_account(name)
    return rec, f"account {rec.name} created ({rec.id})"


@command(account, "list")
def account_list(ctx: Ctx):
    recs = ctx.store.directory.list_accounts()
    return recs, _table([[r.name, r.id, r.created_at.date()]
                         for r in recs], ["NAME", "ID", "CREATED"])


@command(account, "remove")
@click.argument("name")
def account_remove(ctx: Ctx, name: str):
    ctx.store.directory.remove_account(name)
    return {"success": True, "removed": name}, f"account {name} removed"


# -- keys -----------------------------------------------------------------------------------------
@main.group("key")
def key() -> None:
    """API keys (SMTP password or HTTP Bearer token)."""


@command(key, "create")
@click.option("--account", required=True, help="Account the key belongs to.")
@click.option("--scopes", required=True, help="Comma separated: send, send:transactional, send:marketing, "
                                              "sandbox, aliases, admin.")
@click.option("--name", default=None, help="A label for the key.")
def key_create(ctx: Ctx, account: str, scopes: str, name: str | None):
    full, rec = ctx.admin.create_key(account, scopes.split(","), name)
    data = {"id": rec.id, "key": full, "account": rec.account_name, "scopes": sorted(rec.scopes)}
    return data, f"{full}\n(key {rec.id} for account {rec.account_name}; shown once, store it now)"


@command(key, "list")
@click.option("--account", default=None)
def key_list(ctx: Ctx, account: str | None):
    recs = ctx.store.directory.list_api_keys(account)
    return recs, _table([[r.id, r.account_name, ",".join(sorted(r.scopes)), r.name, "revoked" if r.revoked else "active"]
                         for r in recs], ["ID", "ACCOUNT", "SCOPES", "NAME", "STATE"])


@command(key, "remove")
@click.argument("key_id")
def key_remove(ctx: Ctx, key_id: str):
    ctx.store.directory.revoke_api_key(key_id)
    return {"success": True, "revoked": key_id}, f"key {key_id} revoked"


# -- domains --------------------------------------------------------------------------------------
@main.group("domain")
def domain() -> None:
    """Sending domains and their DKIM keys."""


def _records_text(records) -> str:
    return "\n".join(f"{r.type}  {r.name}\n    {r.value}\n    ({r.purpose})" for r in records)


@command(domain, "add")
@click.argument("name")
@click.option("--account", required=True)
def domain_add(ctx: Ctx, name: str, account: str):
    rec, records = ctx.admin.add_domain(name, account)
    return ({"domain": rec, "records": records},
            f"domain {rec.name} added for {account}. Publish these DNS records, then run "
            f"`relay domain verify {rec.name}`:\n\n{_records_text(records)}")


@command(domain, "records")
@click.argument("name")
def domain_records(ctx: Ctx, name: str):
    records = ctx.admin.dns_records(ctx.store.directory.get_domain(name.lower()))
    return records, _records_text(records)


@command(domain, "verify")
@click.argument("name")
@click.option("--trust", is_flag=True, help="Mark verified without a DNS check (the sysadmin vouches).")
def domain_verify(ctx: Ctx, name: str, trust: bool):
    rec = ctx.admin.verify_domain(name, trust=trust)
    return rec, f"domain {rec.name} verified"


@command(domain, "list")
@click.option("--account", default=None)
def domain_list(ctx: Ctx, account: str | None):
    recs = ctx.store.directory.list_domains(account)
    return recs, _table([[r.name, r.id, "verified" if r.verified else "unverified",
                          " ".join(k.selector for k in r.keys)] for r in recs], ["DOMAIN", "ID", "STATE", "SELECTORS"])


@command(domain, "remove")
@click.argument("name")
def domain_remove(ctx: Ctx, name: str):
    ctx.store.directory.remove_domain(name.lower())
    return {"success": True, "removed": name}, f"domain {name} removed"


# -- pools (upstream relays) -------------------------------------------------------------------------
@main.group("pool")
def pool() -> None:
    """Upstream relays (SES, Mailgun, a smarthost...) grouped in IP pools."""


@command(pool, "add")
@click.argument("name")
@click.option("--ip-pool", required=True, help="IP pool this upstream serves (e.g. default, transactional).")
@click.option("--host", required=True)
@click.option("--port", required=True, type=int)
@click.option("--encryption", required=True, type=click.Choice(["tls", "ssl", "none"]),
              help="tls = STARTTLS, ssl = implicit TLS, none = plain.")
@click.option("--username", default=None)
@click.option("--password-env", default=None, metavar="VAR",
              help="Read the password from this environment variable (default: RELAY_UPSTREAM_PASSWORD).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@click.option("--priority", default=0, type=int, help="Lower is tried first.")
@click.option("--weight", default=1, type=int, help="Share of load among upstreams of one priority.")
@click.option("--max-connections", default=None, type=int)
@click.option("--no-verify-tls", is_flag=True, help="Do not verify the upstream's certificate.")
def pool_add(ctx: Ctx, name: str, ip_pool: str, host: str, port: int, encryption: str, username: str | None,
             password_env: str | None, password_stdin: bool, priority: int, weight: int,
             max_connections: int | None, no_verify_tls: bool):
    """Define an upstream relay. The password never goes on the command line."""
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password_env:
        if password_env not in os.environ:
            raise Invalid(f"environment variable {password_env} is not set", field="password")
        password = os.environ[password_env]
    elif os.environ.get("RELAY_UPSTREAM_PASSWORD"):
        password = os.environ["RELAY_UPSTREAM_PASSWORD"]
    if username and not password:
        raise Invalid("--username needs a password: --password-stdin or --password-env VAR", field="password")
    rec = ctx.admin.add_upstream(name=name, ip_pool=ip_pool, host=host, port=port, encryption=encryption,
                                 username=username, password=password, verify_tls=False if no_verify_tls else None,
                                 priority=priority, weight=weight, max_connections=max_connections)
    return rec, f"upstream {rec.name} ({rec.host}:{rec.port}, {rec.encryption}) added to IP pool {rec.ip_pool}"


@command(pool, "list")
@click.option("--ip-pool", default=None)
def pool_list(ctx: Ctx, ip_pool: str | None):
    recs = ctx.store.directory.list_upstreams(ip_pool)
    return recs, _table([[r.name, r.ip_pool, f"{r.host}:{r.port}", r.encryption, r.username, r.priority, r.weight,
                          "active" if r.is_active else "inactive"] for r in recs],
                        ["NAME", "IP POOL", "ADDRESS", "TLS", "USER", "PRIO", "WEIGHT", "STATE"])


@command(pool, "remove")
@click.argument("name")
def pool_remove(ctx: Ctx, name: str):
    ctx.store.directory.remove_upstream(name)
    return {"success": True, "removed": name}, f"upstream {name} removed"


@command(pool, "test")
@click.argument("name")
def pool_test(ctx: Ctx, name: str):
    """EHLO, TLS and AUTH against the upstream, without sending mail."""
    from relay.delivery.upstream import Upstream, UpstreamConfig

    rec = ctx.store.directory.get_upstream(name)
    d = ctx.settings.delivery
    up = Upstream(UpstreamConfig(id=rec.id, name=rec.name, host=rec.host, port=rec.port, encryption=rec.encryption,
                                 username=rec.username, password=ctx.admin.upstream_password(rec),
                                 verify_tls=rec.verify_tls), local_hostname=ctx.settings.hostname,
                  connect_timeout=d.connect_timeout, command_timeout=d.command_timeout)
    result = asyncio.run(up.probe())
    text = f"{result['message']} ({result['latencyMs']} ms)" + (f": {result['error']}" if "error" in result else "")
    return result, text, 0 if result["success"] else 1


# -- aliases ----------------------------------------------------------------------------------------
@main.group("alias")
def alias() -> None:
    """Sending aliases: verified From addresses, each routed to an IP pool."""


@command(alias, "add")
@click.argument("email")
@click.option("--account", required=True)
@click.option("--ip-pool", default="default", show_default=True)
@click.option("--name", default=None, help="Display name.")
@click.option("--default", "is_default", is_flag=True, help="Make it the account's default alias.")
def alias_add(ctx: Ctx, email: str, account: str, ip_pool: str, name: str | None, is_default: bool):
    """Create an alias; a verification email goes to the address."""
    rec, queue_id = ctx.admin.add_alias(email, account=account, ip_pool=ip_pool, name=name, is_default=is_default)
    return ({"alias": rec, "verification_queue_id": queue_id},
            f"alias {rec.email} ({rec.id}) created on IP pool {rec.ip_pool}; verification email queued as "
            f"{queue_id}.\nIt cannot send until the link in that email is opened (or `relay alias verify {rec.email}`).")


@command(alias, "verify")
@click.argument("email")
def alias_verify(ctx: Ctx, email: str):
    """Mark an alias verified without the emailed link (sysadmin override)."""
    rec = ctx.admin.verify_alias(email=email)
    return rec, f"alias {rec.email} verified"


@command(alias, "list")
@click.option("--account", default=None)
def alias_list(ctx: Ctx, account: str | None):
    recs = ctx.store.directory.list_aliases(account)
    return recs, _table([[r.email, r.id, r.ip_pool, r.name, "yes" if r.is_default else "",
                          "verified" if r.verified else "unverified"] for r in recs],
                        ["EMAIL", "ID", "IP POOL", "NAME", "DEFAULT", "STATE"])


@command(alias, "remove")
@click.argument("email")
def alias_remove(ctx: Ctx, email: str):
    ctx.store.directory.remove_alias(email)
    return {"success": True, "removed": email}, f"alias {email} removed"


# -- queue ------------------------------------------------------------------------------------------
@main.group("queue")
def queue() -> None:
    """The mail queue: messages and per-recipient delivery state."""


@command(queue, "list")
@click.option("--state", type=click.Choice(["queued", "deferred", "delivering", "delivered", "bounced",
                                            "suppressed", "expired", "sandbox"]), default=None)
@click.option("--limit", default=100, show_default=True)
def queue_list(ctx: Ctx, state: str | None, limit: int):
    msgs = ctx.store.queue.list_messages(state, limit)
    data = [dict(id=m.id, state=m.state, mail_from=m.mail_from, subject=m.subject, ip_pool=m.ip_pool,
                 created_at=m.created_at, recipients=[dict(address=r.address, state=r.state) for r in m.recipients])
            for m in msgs]
    return data, _table([[m.id, m.state, m.created_at.strftime("%Y-%m-%d %H:%M:%S"), m.mail_from or "<>",
                          ",".join(r.address for r in m.recipients)] for m in msgs],
                        ["QUEUE ID", "STATE", "CREATED", "FROM", "TO"])


@command(queue, "show")
@click.argument("queue_id")
def queue_show(ctx: Ctx, queue_id: str):
    m = ctx.store.queue.show(queue_id)
    lines = [f"{m.id}  from <{m.mail_from}>  pool {m.ip_pool}  size {m.size}  created {m.created_at:%Y-%m-%d %H:%M:%S}",
             f"  subject: {m.subject}", "  recipients:"]
    lines += [f"    {r.address}: {r.state} (attempts {r.attempts}){' - ' + r.last_reply if r.last_reply else ''}"
              for r in m.recipients]
    lines.append("  events:")
    lines += [f"    {e.at:%H:%M:%S} {e.type:10} {e.recipient or ''} {e.upstream or ''} {e.code or ''} {e.reply or ''}".rstrip()
              for e in m.events]
    return m, "\n".join(lines)


@command(queue, "retry")
@click.argument("queue_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every deferred message.")
def queue_retry(ctx: Ctx, queue_ids: tuple[str, ...], all_: bool):
    """Make deferred recipients due now (of the given messages, or --all)."""
    from relay.cli.progress import progress

    if bool(queue_ids) == all_:
        raise Invalid("give queue ids or --all", field="queue_id")
    if all_:
        n = ctx.store.queue.retry(None)
    else:
        n = sum(ctx.store.queue.retry(qid) for qid in progress(queue_ids, label="retrying", as_json=ctx.as_json))
    data: dict[str, Any] = {"success": True, "recipients": n}
    if len(queue_ids) > 1:
        data["messages"] = len(queue_ids)
    return data, f"{n} recipient(s) due now"


@command(queue, "delete")
@click.argument("queue_ids", nargs=-1)
@click.option("--state", type=click.Choice(["queued", "deferred", "delivered", "bounced", "suppressed", "expired"]),
              default=None, help="Every message with a recipient in this state (instead of queue ids).")
def queue_delete(ctx: Ctx, queue_ids: tuple[str, ...], state: str | None):
    """Delete messages (body, recipients and events) from the store."""
    from relay.cli.progress import progress

    if bool(queue_ids) == bool(state):
        raise Invalid("give queue ids or --state", field="queue_id")
    ids = list(queue_ids) or [m.id for m in ctx.store.queue.list_messages(state, limit=10_000_000)]
    for qid in progress(ids, label="deleting", as_json=ctx.as_json):
        ctx.store.queue.delete(qid)
    if len(queue_ids) == 1:
        return {"success": True, "deleted": queue_ids[0]}, f"message {queue_ids[0]} deleted"
    return {"success": True, "deleted": ids, "count": len(ids)}, f"{len(ids)} message(s) deleted"


from relay.cli import policy as cli_policy  # noqa: E402,F401  (suppression, quota, route explain)

if __name__ == "__main__":  # pragma: no cover
    main()
