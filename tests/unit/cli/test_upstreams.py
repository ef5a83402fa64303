"""``relay upstream add``: the password never on the command line, and a clear word when it is empty."""

from __future__ import annotations


def add(relay, *extra: str, input: str | None = None, **env: str | None):
    return relay("upstream", "add", "ses", "--ip-pool", "default", "--host", "smtp.example.com", "--port", "587",
                 "--encryption", "tls", "--username", "AKIA", *extra, input=input, **env)


def test_an_empty_password_on_stdin_says_so(relay):
    r = add(relay, "--password-stdin", input="\n")
    assert r.exit_code == 2
    assert r.stderr == "relay: --password-stdin: the password read from stdin is empty\n"
    assert r.stdout == ""
    assert relay("upstream", "list", "--json").stdout.strip() == "[]"  # nothing stored


def test_nothing_at_all_on_stdin_is_empty_too(relay):
    r = add(relay, "--password-stdin", input="")
    assert (r.exit_code, r.stderr) == (2, "relay: --password-stdin: the password read from stdin is empty\n")


def test_an_empty_password_variable_says_so(relay):
    r = add(relay, "--password-env", "SES_PW", SES_PW="")
    assert (r.exit_code, r.stderr) == (2, "relay: --password-env: environment variable SES_PW is empty\n")


def test_no_password_source_at_all_names_the_options(relay):
    r = add(relay)
    assert (r.exit_code, r.stderr) == (2, "relay: --username needs a password: --password-stdin or --password-env VAR\n")


def test_a_password_on_stdin_is_taken(relay):
    r = add(relay, "--password-stdin", input="secret\n")
    assert r.exit_code == 0, r.output
    assert "secret" not in r.stdout + r.stderr
