"""``relay serve`` and ``relay health``: run the gateway, and ask a running one how it is."""

from __future__ import annotations

import sys

import click

from relay.cli.base import Ctx
from relay.vocab import ConfigError


@click.command("serve")
@click.option("--json", "as_json", is_flag=True, help="Log as JSON lines (same as [log] format = \"json\").")
@click.pass_obj
def serve(ctx: Ctx, as_json: bool) -> None:
    """Run the gateway: SMTP listeners, HTTP API and delivery, in one process."""
    from relay.gateway import check_libraries, run
    from relay.ops.logs import setup_logging

    try:
        check_libraries()  # before anything is set up: a library version we were not written for
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


@click.command("health")
@click.option("--ready", is_flag=True, help="Ask /readyz (listeners, store, upstreams) instead of /healthz.")
@click.pass_obj
def health(ctx: Ctx, ready: bool) -> None:
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
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/{'readyz' if ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            click.echo(resp.read().decode())
            sys.exit(0)
    except urllib.error.HTTPError as exc:
        click.echo(exc.read().decode() or str(exc), err=True)
    except OSError as exc:
        click.echo(f"relay: {url}: {exc}", err=True)
    sys.exit(1)


COMMANDS = (serve, health)
