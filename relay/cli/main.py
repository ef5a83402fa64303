"""The ``relay`` command: serve, and the sysadmin's verbs. Every verb that prints data takes ``--json``.

This module only assembles the command groups (one module each) onto the root group of
:mod:`relay.cli.base`; each command translates its options into one service call.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from policies.spec import COMMANDS_ENTRY_POINT_GROUP
from relay.cli import (
    accounts,
    aliases,
    domains,
    ip_pools,
    keys,
    queue,
    route,
    serve,
    suppressions,
    upstreams,
    users,
)
from relay.cli.base import main

for _cmd in (*serve.COMMANDS, accounts.account, keys.key, domains.domain, upstreams.upstream, upstreams.pool, ip_pools.ip_pool,
             aliases.alias, queue.queue, suppressions.suppression, route.route, users.user):
    main.add_command(_cmd)
for _ep in entry_points(group=COMMANDS_ENTRY_POINT_GROUP):  # commands that installed policies bring (relay quota)
    if _ep.name not in main.commands:
        main.add_command(_ep.load(), _ep.name)

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
