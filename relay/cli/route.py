"""``relay route explain``: how a submission would be routed and judged, without sending it."""

from __future__ import annotations

import click

from relay.cli.base import Ctx, command


@click.group("route")
def route() -> None:
    """How a submission would be routed and judged, without sending it."""


@command(route, "explain")
@click.option("--key", required=True, help="The API key (its id rk_xxxxxxxx, or the whole key).")
@click.option("--from", "sender", required=True, help="MAIL FROM / the From address.")
@click.option("--to", "recipients", multiple=True, required=True, help="A recipient (repeat for more).")
@click.option("--listener", type=click.Choice(["submission", "smtps", "relay", "api"]), default="submission",
              show_default=True, help="The front door to assume.")
def route_explain(ctx: Ctx, key: str, sender: str, recipients: tuple[str, ...], listener: str):
    """Alias, IP pool, upstreams in order, and each enabled policy's verdict for MAIL and each recipient."""
    from relay.services.explain import explain_route, render

    result = explain_route(ctx.store, ctx.settings, key=key, sender=sender.strip().strip("<>"),
                           recipients=[r.strip().strip("<>") for r in recipients], listener=listener)
    return result, render(result)
