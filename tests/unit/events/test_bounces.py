"""relay.events.bounces: the bounce stage records hard bounces through the suppression book (when
an enabled policy provides one), then queues the DSN."""

from __future__ import annotations

import datetime as dt

from relay.events.bounces import Bouncer
from relay.store.queue import Outcome, QueuedMessage

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Book:
    def __init__(self, fail: bool = False) -> None:
        self.recorded: list[tuple[str, str, str, str | None]] = []
        self.fail = fail

    async def record(self, account_id: str, address: str, reason: str, detail: str | None = None) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.recorded.append((account_id, address, reason, detail))


def message(account_id: str | None = "acc_1", mail_from: str = "app@example.com", source: str = "smtp") -> QueuedMessage:
    return QueuedMessage(id="msg_1", ip_pool="default", mail_from=mail_from,
                         body=b"From: app@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
                         recipients=["gone@dest.org", "spam@dest.org", "late@dest.org"], account_id=account_id,
                         expires_at=NOW, created_at=NOW, source=source)


FAILED = [Outcome("msg_1", "gone@dest.org", "bounced", 550, "5.1.1 no such user", "up1"),
          Outcome("msg_1", "spam@dest.org", "bounced", 554, "5.7.1 rejected as spam", "up1"),
          Outcome("msg_1", "late@dest.org", "expired", 451, "message expired after retries; last reply: 4.4.1", None)]


def bouncer(book) -> tuple[Bouncer, list[dict]]:
    dsns: list[dict] = []

    async def submit(**kw) -> str:
        dsns.append(kw)
        return "msg_dsn"

    return Bouncer(hostname="relay.test", submit=submit, suppressions=book), dsns


async def test_a_hard_bounce_is_recorded_then_the_dsn_goes():
    book = Book()
    stage, dsns = bouncer(book)
    await stage(message(), FAILED)
    assert book.recorded == [("acc_1", "gone@dest.org", "hard_bounce", "5.1.1 no such user")]
    assert [d["recipients"] for d in dsns] == [["app@example.com"]]


async def test_a_bouncing_dsn_is_suppressed_but_gets_no_dsn():
    book = Book()
    stage, dsns = bouncer(book)
    await stage(message(mail_from="", source="dsn"), FAILED[:1])
    assert book.recorded == [("acc_1", "gone@dest.org", "hard_bounce", "5.1.1 no such user")] and dsns == []


async def test_without_a_book_or_an_account_nothing_is_recorded_and_the_dsn_still_goes():
    stage, dsns = bouncer(None)  # no enabled policy provides a suppression list
    await stage(message(), FAILED)
    assert len(dsns) == 1
    book = Book()
    stage, dsns = bouncer(book)
    await stage(message(account_id=None), FAILED)
    assert book.recorded == [] and len(dsns) == 1


async def test_a_book_that_fails_is_logged_and_the_dsn_still_goes(caplog):
    stage, dsns = bouncer(Book(fail=True))
    await stage(message(), FAILED)
    assert len(dsns) == 1
    assert "could not record the hard bounce on the suppression list" in caplog.text
