"""``relay queue list --state`` and ``relay queue delete --state`` take the same states: the queue's."""

from __future__ import annotations

import click

from relay.cli.queue import queue
from relay.vocab import STATES


def _choices(command: str) -> tuple[str, ...]:
    (option,) = [p for p in queue.commands[command].params if p.name == "state"]
    assert isinstance(option.type, click.Choice)
    return tuple(option.type.choices)


def test_list_and_delete_accept_every_queue_state():
    assert _choices("list") == _choices("delete") == STATES


def test_an_unknown_state_is_a_usage_error_naming_the_states(relay):
    for verb in ("list", "delete"):
        r = relay("queue", verb, "--state", "lost")
        assert r.exit_code == 2
        assert "'lost' is not one of 'queued', 'deferred', 'delivering', 'delivered', 'bounced', 'suppressed', " \
               "'expired', 'sandbox'" in r.stderr


def test_delete_by_state_takes_sandbox_and_delivering(relay):
    for state in ("sandbox", "delivering"):
        r = relay("queue", "delete", "--state", state, "--json")
        assert r.exit_code == 0, r.output
        assert r.stdout.startswith("{")
