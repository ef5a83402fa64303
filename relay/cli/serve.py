"""``relay serve``, ``relay init`` and ``relay health``: run the gateway, make its data directory,
and ask a running one how it is."""

from __future__ import annotations

import json
import sys

import click
import sqlalchemy.exc

from relay.cli.base import EXIT_REFUSED, EXIT_STORE, EXIT_USAGE, Ctx, StoreUnreachable, command
from relay.vocab import ConfigError, Invalid

JSON_DEPRECATED = "relay: `relay serve --json` is deprecated; use `relay serve --log-json` (JSON log lines)"


@click.command("serve")
@click.option("--log-json", "log_json", is_flag=True, help="Log as JSON lines (same as [log] format = \"json\").")
@click.option("--json", "old_json", is_flag=True, hidden=True, help="Deprecated: the former name of --log-json.")
@click.pass_obj
def serve(ctx: Ctx, log_json: bool, old_json: bool) -> None:
    """Run the gateway: SMTP listeners, HTTP API and delivery, in one process.

    On first start it creates the data directory (0700) with the master key, the self-signed
    certificate and the SQLite database. Exit 1 when a listener's address is in use, 2 on a bad
    configuration (or a master key that does not open the store's secrets), 3 when the store cannot
    be reached."""
    from relay.gateway import ListenerBindError, check_libraries, run
    from relay.ops.logs import setup_logging

    if old_json:
        click.echo(JSON_DEPRECATED, err=True)
    try:
        check_libraries()  # before anything is set up: a library version we were not written for
        settings = ctx.settings
    except ConfigError as exc:
        click.echo(f"relay: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    setup_logging(settings.log.level, "json" if log_json or old_json else settings.log.format)
    try:
        sys.exit(run(settings))
    except ConfigError as exc:
        click.echo(f"relay: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except ListenerBindError as exc:
        click.echo(f"relay: cannot start: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    except OSError as exc:
        click.echo(f"relay: cannot start: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    except sqlalchemy.exc.OperationalError as exc:  # the database is down or refuses us (exit 3, as every command)
        from relay.ops.config import mask_url

        reason = (str(exc.orig or exc).strip().splitlines() or [type(exc).__name__])[0]
        click.echo(f"relay: cannot start: cannot reach the store {mask_url(settings.database_url)}: {reason}",
                   err=True)
        sys.exit(EXIT_STORE)


@command(None, "init")
def init(ctx: Ctx):
    """Create the data directory (0700) with the master key, the self-signed certificate and the store,
    as the first `relay serve` does, and print what it made. What exists already is kept."""
    from relay.ops.files import private_dir
    from relay.ops.tls import ensure_certificate
    from relay.secrets import load_or_create_master_key

    ctx.may_create = True
    s = ctx.settings
    made = {"data_dir": not s.data_dir.is_dir(), "master_key": not s.master_key_path.exists(),
            "certificate": s.tls.cert is None and not (s.data_dir / "tls" / "cert.pem").exists()}
    private_dir(s.data_dir)
    load_or_create_master_key(s.master_key_path)
    cert, key = ensure_certificate(s.tls.cert, s.tls.key, s.data_dir, s.hostname)
    ctx.store  # noqa: B018 - opens the store: creates (or upgrades) the schema
    from relay.ops.config import mask_url

    master = "env RELAY_MASTER_KEY" if "RELAY_MASTER_KEY" in ctx.env else str(s.master_key_path)
    data = {"data_dir": str(s.data_dir), "master_key": master, "certificate": str(cert), "certificate_key": str(key),
            "database": mask_url(s.database_url), "created": sorted(k for k, v in made.items() if v)}

    def line(what: str, value: str, key_: str) -> str:
        return f"{what:12} {value}" + ("  (created)" if made.get(key_) else "  (exists)" if key_ in made else "")

    text = "\n".join([line("data dir", data["data_dir"], "data_dir"), line("master key", master, "master_key"),
                      line("certificate", str(cert), "certificate"), line("database", data["database"], "")])
    if made["master_key"] and master != "env RELAY_MASTER_KEY":
        text += "\nBack up the master key: the secrets in the database cannot be read without it."
    return data, text


@click.command("health")
@click.option("--ready", is_flag=True, help="Ask /readyz (listeners, store, upstreams) instead of /healthz.")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer (or the error as JSON).")
@click.pass_obj
def health(ctx: Ctx, ready: bool, as_json: bool) -> None:
    """Ask the running gateway's API whether it is alive (exit 0) or not (exit 1): the HEALTHCHECK.

    Only 0 and 1, as Docker's HEALTHCHECK expects (a disabled API or a bad configuration is 1 too)."""
    import urllib.error
    import urllib.request

    from relay.ops.config import parse_hostport

    def fail(message: str, body: object = None) -> None:
        if as_json:
            click.echo(json.dumps(body if isinstance(body, dict) else {"success": False, "error": message}, indent=2))
        else:
            click.echo(f"relay: {message}", err=True)
        sys.exit(EXIT_REFUSED)

    try:
        listen = ctx.settings.api.listen
    except ConfigError as exc:
        fail(str(exc))
    if not listen:
        fail("the API listener is disabled (api.listen)")
    host, port = parse_hostport(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            raw = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode()
        fail(f"{url}: HTTP {exc.code} {raw.strip()}".strip(), _parse(raw))
    except OSError as exc:
        fail(f"{url}: {getattr(exc, 'reason', exc)}")
    body = _parse(raw)
    if as_json:
        click.echo(json.dumps(body if body is not None else {"status": raw.strip()}, indent=2))
    else:
        click.echo(f"{body.get('status', 'ok') if isinstance(body, dict) else raw.strip()} ({url})")
    sys.exit(0)


def _parse(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@command(None, "migrate")
@click.option("--check", is_flag=True,
              help="Change nothing: say whether the store's schema is the newest (exit 1 when it is not).")
@click.option("--to", "target", default="head", show_default=True, metavar="REV",
              help="The schema revision to bring the store to (an older one than the store's downgrades).")
@click.option("--sql", is_flag=True,
              help="Print the SQL that would bring the store to --to, and run nothing (for PostgreSQL; "
                   "SQLite's table rebuilds need the live database).")
def migrate(ctx: Ctx, check: bool, target: str, sql: bool):
    """Run the schema migrations (Alembic) explicitly; `relay serve` also upgrades to the newest at
    start. With several nodes on one PostgreSQL store, run it once (from one node) before starting
    the upgraded nodes; concurrent runs wait for each other."""
    from relay.ops.config import mask_url
    from relay.store import Store, migration_sql

    ctx.check_data_dir()
    s = ctx.settings
    store = Store(s.database_url)
    try:
        try:
            before, head = store.revisions()
            if sql:
                text = migration_sql(s.database_url, before, target)
                return {"from": before, "to": target, "sql": text}, text.rstrip()
            if not check and before != (head if target == "head" else target):
                store.migrate(target)
            after = store.revisions()[0] if not check else before
        except StoreUnreachable:
            raise
        except Exception as exc:  # the database is down or refuses us, or an unknown revision
            from alembic.util import CommandError

            if isinstance(exc, CommandError):
                raise Invalid(f"cannot migrate to {target!r}: {exc}", field="to") from None
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreUnreachable(f"cannot reach the store {mask_url(s.database_url)}: {reason}") from exc
    finally:
        store.close()
    data = {"database": mask_url(s.database_url), "before": before, "after": after, "head": head,
            "current": after == head}
    if check:
        text = (f"store {data['database']} is at revision {before or '(empty)'}; the newest is {head}"
                + ("" if before == head else ": run `relay migrate`"))
        return data, text, 0 if before == head else EXIT_REFUSED
    if before == after:
        return data, f"store {data['database']} already at revision {after}"
    return data, f"store {data['database']} migrated from {before or '(empty)'} to {after}"


COMMANDS = (serve, init, health, migrate)
