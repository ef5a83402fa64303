"""SIGKILL while the store is writing a delivery's dot marker (PostgreSQL).

The window that lost mail once: the marker's COMMIT had reached the database when the process was
killed, so the database finished it while the process never let the held dot go. Here a trigger
stalls the marker's write (in the UPDATE itself, so it never commits; or in the COMMIT, so the
database completes it after the kill), the gateway is killed inside that stall, and restarted. In
both cases the message must reach the upstream exactly once: nothing lost, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import uuid

import aiosmtplib
import pytest

from tests.conftest import Sink, free_port, wait_for
from tests.support.crash import SENDER, Node, counts, pg_node, wait_settled

STALL = """
CREATE OR REPLACE FUNCTION relay_test_stall() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
"""
TRIGGERS = {
    # the UPDATE stalls: killed there, the transaction is rolled back; only the journal knows
    "update": "CREATE TRIGGER relay_test_stall BEFORE UPDATE ON recipients FOR EACH ROW "
              "WHEN (NEW.dot_sent_at IS NOT NULL) EXECUTE FUNCTION relay_test_stall()",
    # the COMMIT stalls: killed there, the database completes it anyway
    "commit": "CREATE CONSTRAINT TRIGGER relay_test_stall AFTER UPDATE ON recipients DEFERRABLE INITIALLY DEFERRED "
              "FOR EACH ROW WHEN (NEW.dot_sent_at IS NOT NULL) EXECUTE FUNCTION relay_test_stall()",
}


def _sql(url: str, *statements: str) -> list:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return [conn.execute(s).fetchall() if s.lstrip().upper().startswith("SELECT") else conn.execute(s)
                for s in statements][-1:]


def _stalled(url: str) -> bool:
    (rows,) = _sql(url, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event = 'PgSleep'")
    return rows[0][0] > 0


async def _send_one(node: Node) -> str:
    mid = f"<marker-{uuid.uuid4().hex}@example.com>"
    raw = f"From: App <{SENDER}>\r\nTo: r@dest.org\r\nSubject: marker\r\nMessage-ID: {mid}\r\n\r\nbody\r\n".encode()
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=node.submission, start_tls=True, validate_certs=False, timeout=10)
    await smtp.connect()
    await smtp.login("apikey", node.key)
    errors, reply = await smtp.sendmail(SENDER, ["r@dest.org"], raw)
    assert not errors and "queued as msg_" in reply, reply
    await smtp.quit()
    return mid


async def test_kill9_while_the_dot_marker_is_being_written_sends_it_again_counted(tmp_path, pg_url):
    sink = Sink(free_port())
    async with pg_node(tmp_path, pg_url, sink) as n:
        await n.start()
        await wait_settled(n)  # the alias verification mail is out of the way
        await asyncio.to_thread(_sql, pg_url, STALL)
        for stage, trigger in TRIGGERS.items():
            await asyncio.to_thread(_sql, pg_url, trigger)
            mid = await _send_one(n)
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while not await asyncio.to_thread(_stalled, pg_url):
                assert loop.time() < end, f"{stage}: the marker write never stalled"
                await asyncio.sleep(0.005)
            n.kill9()
            # the dot went before the marker: the upstream has (or is reading) the message already
            await wait_for(lambda mid=mid: counts(sink, [mid])[mid] == 1, timeout=5)
            await asyncio.to_thread(_sql, pg_url, "DROP TRIGGER relay_test_stall ON recipients")  # waits for the stall
            await n.start()
            await wait_settled(n)
            await wait_for(lambda mid=mid: counts(sink, [mid])[mid] == 2, timeout=5)
            await asyncio.sleep(0.3)  # a third copy would show up now
            # the dot went, its reply never came back: sent again, a counted duplicate (never assumed)
            assert counts(sink, [mid])[mid] == 2, stage
            assert set(n.states()) == {"delivered"}, (stage, n.states())
            restarted = (tmp_path / f"serve{n.starts}.log").read_text(errors="replace")
            assert "delivering again: the final dot went without the upstream's reply" in restarted, stage


@pytest.fixture(autouse=True)
def _needs_tcp_cork():
    import socket

    if not hasattr(socket, "TCP_CORK"):
        pytest.skip("the dot is held with TCP_CORK (Linux)")
