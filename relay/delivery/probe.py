"""The connection test of an upstream (the seeds' ``POST /smtp-pools/:id/test``): connect, EHLO,
TLS and AUTH, no mail. ``{success, message, latencyMs[, error]}``.

A failure is classified (refused, timeout, TLS, auth, not SMTP, not allowed, unreachable) and told
in our own words with the configured host and port: never the peer's bytes, so the test cannot be
used to grab the banner of whatever listens at an address.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from typing import Any

from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from relay.delivery.connections import SessionPool, TargetRefused
from relay.delivery.transaction import SESSION_ERRORS


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 8:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


def classify(exc: BaseException, where: str) -> str:
    """``kind: what happened`` for a failed connection test; ``where`` is the configured host:port."""
    chain = _chain(exc)
    if isinstance(exc, TargetRefused):
        return f"not_allowed: {where} {exc}"
    if any(isinstance(e, (SMTPTimeoutError, asyncio.TimeoutError, TimeoutError)) for e in chain):
        return f"timeout: {where} did not answer in time"
    if any(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED for e in chain):
        return f"refused: {where} refused the connection"
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return f"tls: the certificate of {where} is not valid for that name"
    if isinstance(exc, SMTPAuthenticationError) or \
            (type(exc) is SMTPException and "auth" in str(exc).lower()):
        return f"auth: {where} did not accept the credentials (or offers no AUTH)"
    if any(isinstance(e, ssl.SSLError) for e in chain) or \
            (type(exc) is SMTPException and "tls" in str(exc).lower()):
        return f"tls: TLS could not be negotiated with {where}"
    if isinstance(exc, (SMTPConnectResponseError, SMTPResponseException, SMTPServerDisconnected)):
        return f"not_smtp: {where} did not answer as an SMTP server"
    if isinstance(exc, OSError) or any(isinstance(e, OSError) for e in chain):
        return f"unreachable: {where} could not be reached"
    return f"failed: the SMTP session with {where} failed"


async def probe(pool: SessionPool) -> dict[str, Any]:
    """Open one session of ``pool``'s upstream and close it again."""
    where = f"{pool.cfg.host}:{pool.cfg.port}"
    started = time.monotonic()
    try:
        smtp = await pool.connect()
    except (TargetRefused, *SESSION_ERRORS) as exc:
        return {"success": False, "message": "SMTP connection failed",
                "latencyMs": round((time.monotonic() - started) * 1000), "error": classify(exc, where)}
    latency = round((time.monotonic() - started) * 1000)
    try:
        await smtp.quit()
    except Exception:  # noqa: BLE001, S110  (the test is over: a failed QUIT changes nothing)
        pass
    smtp.close()
    return {"success": True, "message": "SMTP connection successful", "latencyMs": latency}
