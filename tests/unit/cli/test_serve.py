"""``relay serve`` (--log-json, the deprecated --json), ``relay health`` (--json) and start-up refusals."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay.cli.serve import JSON_DEPRECATED


@pytest.fixture
def fake_api():
    """An HTTP server answering /healthz 200 and /readyz 503, as a gateway's API would."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.path == "/healthz"
            body = json.dumps({"status": "ok" if ok else "not ready", "worker": 0}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_prints_the_status_or_with_json_the_answer(relay, fake_api):
    r = relay("health", RELAY_API_LISTEN=fake_api)
    assert (r.exit_code, r.stdout, r.stderr) == (0, f"ok (http://{fake_api}/healthz)\n", "")
    r = relay("health", "--json", RELAY_API_LISTEN=fake_api)
    assert (r.exit_code, json.loads(r.stdout), r.stderr) == (0, {"status": "ok", "worker": 0}, "")


def test_health_not_ready_is_1_with_the_answer_as_json(relay, fake_api):
    r = relay("health", "--ready", "--json", RELAY_API_LISTEN=fake_api)
    assert (r.exit_code, json.loads(r.stdout), r.stderr) == (1, {"status": "not ready", "worker": 0}, "")
    r = relay("health", "--ready", RELAY_API_LISTEN=fake_api)
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr.startswith(f"relay: http://{fake_api}/readyz: HTTP 503 ")


def test_health_with_nothing_listening_is_1_in_json_too(relay):
    r = relay("health", "--json", RELAY_API_LISTEN="127.0.0.1:1")
    assert r.exit_code == 1 and r.stderr == ""
    assert json.loads(r.stdout)["success"] is False
    r = relay("health", RELAY_API_LISTEN="")
    assert (r.exit_code, r.stderr) == (1, "relay: the API listener is disabled (api.listen)\n")


def test_serve_log_json_is_the_option_and_json_a_deprecated_alias(relay):
    from relay.cli.serve import serve

    visible = {o for p in serve.params if not p.hidden for o in p.opts}
    assert "--log-json" in visible and "--json" not in visible
    # a bad configuration stops it before anything starts: the note, then the error, exit 2
    r = relay("serve", "--json", RELAY_SMTP_BOGUS="1")
    assert r.exit_code == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == JSON_DEPRECATED
    assert lines[1].startswith("relay: config: unknown environment variable RELAY_SMTP_BOGUS: it names no settings key; "
                               "the closest known is RELAY_SMTP_")


def test_serve_with_an_unknown_env_key_does_not_start(relay, tmp_path):
    r = relay("serve", "--log-json", RELAY_DATADIR="/var/lib/relay")
    assert r.exit_code == 2
    assert r.stderr == ("relay: config: unknown environment variable RELAY_DATADIR: it names no settings key; "
                        "the closest known is RELAY_DATA_DIR\n")
    assert not (tmp_path / "data").exists()
