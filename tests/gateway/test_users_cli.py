"""``relay user``: the operator adds, lists, removes users and resets their passwords on the data
directory of a running gateway; what it does takes effect on the gateway's logins and sessions at once.
The first command runs as its own process (the installed entry point); the others in-process (click's
CliRunner in a thread: the command runs its own event loop), the same code without the start-up cost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from click.testing import CliRunner

from relay.cli.main import main
from tests.support.api import Api
from tests.support.sessions import PASSWORD, browser, login_token

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def process(api: Api, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATA_DIR"] = str(api.gw.settings.data_dir)
    return subprocess.run([sys.executable, "-m", "relay.cli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120)


def _invoke(api: Api, args: tuple[str, ...], stdin: str | None) -> Ran:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RELAY_")}
    env["RELAY_DATA_DIR"] = str(api.gw.settings.data_dir)
    r = CliRunner().invoke(main, list(args), input=stdin, env=env)
    return Ran(r.exit_code, r.stdout, r.stderr)


async def relay(api: Api, *args: str, stdin: str | None = None) -> Ran:
    return await asyncio.to_thread(_invoke, api, args, stdin)


async def login_status(api: Api, email: str, password: str) -> int:
    async with browser(api, None, origin=None) as c:
        return (await c.post("/api/auth/login", json={"email": email, "password": password})).status_code


async def test_user_add_prints_a_one_time_link_that_sets_the_password(api: Api):
    added = process(api, "user", "add", "Alice@Acme.test", "--account", "acme", "--role", "admin")
    assert added.returncode == EXIT_OK, added.stderr
    link = added.stdout.strip()
    assert added.stdout.count("\n") == 1 and "/set-password/" in link  # the link alone on stdout
    assert await login_status(api, "alice@acme.test", "") == 401
    await api.gw.users.set_password(link.rsplit("/", 1)[1], PASSWORD)
    assert await login_status(api, "alice@acme.test", PASSWORD) == 200
    reset = await relay(api, "user", "reset-password", "alice@acme.test")
    assert reset.returncode == EXIT_OK and "/set-password/" in reset.stdout and reset.stdout.strip() != link
    assert await login_status(api, "alice@acme.test", PASSWORD) == 401  # the old password ends with the reset


async def test_user_add_with_password_stdin_list_and_remove(api: Api):
    added = await relay(api, "user", "add", "bob@acme.test", "--account", "acme", "--role", "member", "--password-stdin",
                  stdin=PASSWORD + "\n")
    assert added.returncode == EXIT_OK, added.stderr
    assert "set-password" not in added.stdout and "bob@acme.test" in added.stdout
    token = await login_token(api, "bob@acme.test")
    listed = await relay(api, "user", "list", "--account", "acme", "--json")
    assert listed.returncode == EXIT_OK, listed.stderr
    users = json.loads(listed.stdout)
    assert [(u["email"], u["role"], u["has_password"]) for u in users] == [("bob@acme.test", "member", True)]
    assert "argon2" not in listed.stdout and "password_hash" not in listed.stdout
    table = await relay(api, "user", "list", "--account", "acme")
    assert "bob@acme.test" in table.stdout and "member" in table.stdout
    for args, code in ((("add", "bob@acme.test", "--account", "acme", "--role", "admin"), EXIT_REFUSED),  # taken
                       (("add", "c@acme.test", "--account", "nope", "--role", "admin"), EXIT_REFUSED),
                       (("add", "c@acme.test", "--account", "acme", "--role", "root"), EXIT_USAGE),
                       (("add", "not-an-email", "--account", "acme", "--role", "admin"), EXIT_USAGE),
                       (("list", "--account", "nope"), EXIT_REFUSED)):
        r = await relay(api, "user", *args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
    short = await relay(api, "user", "add", "c@acme.test", "--account", "acme", "--role", "admin", "--password-stdin",
                  stdin="short\n")
    assert short.returncode == EXIT_USAGE and "at least 10 characters" in short.stderr
    removed = await relay(api, "user", "remove", "BOB@acme.test")
    assert removed.returncode == EXIT_OK, removed.stderr
    async with browser(api, token) as c:
        assert (await c.get("/api/auth/me")).status_code == 401  # at once: sessions are not cached
    assert (await relay(api, "user", "remove", "bob@acme.test")).returncode == EXIT_REFUSED
    assert json.loads((await relay(api, "user", "list", "--account", "acme", "--json")).stdout) == []
