"""The SMTP front door: aiosmtpd sessions on the submission, smtps and relay listeners.

Protocol only. Each hook builds or updates a :class:`relay.submission.pipeline.Context`, calls the pipeline,
and turns a :class:`RelayError` into a reply line. No SQL and no business rules live here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from typing import Any, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException

from relay.asyncio_compat import tls_server_protocol, waiting_for_data
from relay.ops import metrics
from relay.ops.config import SmtpSettings
from relay.smtp.aiosmtpd_compat import RelaySMTPBase
from relay.smtp.data import BlockData
from relay.submission.pipeline import AUTH_FAILED, RELAY_DENIED, SMTP_SCOPES, Pipeline
from relay.vocab import Context, Identity, RelayError

log = logging.getLogger(__name__)
# aiosmtpd's own wording for these, with the codes we promise
_REWRITE = {
    "500 Command line too long": "500 5.5.2 Command line too long",
    "500 Line too long (see RFC5321 4.5.3.1.6)": "552 5.6.0 Message line too long (see RFC 5321 4.5.3.1.6)",
    "552 Error: Too much mail data": "552 5.3.4 Message too big for system",
}
_KEY_SECRET = re.compile(r"(rk_[0-9a-f]{8})_\S+")


def redact(text: str) -> str:
    """An API key pasted into the username field is logged by its public prefix only."""
    return _KEY_SECRET.sub(r"\1_***", text)[:200]

_HAS_ESC = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}")
# Enhanced status codes (RFC 2034/3463) for the replies aiosmtpd writes itself.
_ESC_BY_CODE = {"221": "2.0.0", "220": "2.0.0", "250": "2.0.0", "252": "2.5.0", "421": "4.3.0", "451": "4.3.0",
                "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0",
                "535": "5.7.8", "552": "5.3.4", "554": "5.7.0", "555": "5.5.4"}


class RelaySMTP(BlockData, RelaySMTPBase):
    """aiosmtpd's protocol engine with enhanced status codes on every reply and async AUTH.

    The hooks of :class:`relay.smtp.aiosmtpd_compat.RelaySMTPBase` are implemented here; DATA is read
    as one block (:class:`relay.smtp.data.BlockData`).
    """

    # Per-session state, set on the instance when it changes (no __init__ of its own: one call less
    # per connection). Not names of aiosmtpd's (tests/unit/smtp/test_aiosmtpd_compat.py checks).
    _greeting_or_ehlo = False
    _ehlo_buffer: list[bytes] | None = None
    _errors = 0  # 5xx replies so far
    counted_ip: str | None = None  # the address counted against the connection limits

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # STARTTLS: aiosmtpd closes the connection, sends nothing
            tls_failed(self.event_handler.listener, self.session.peer if self.session else None, error.__cause__)
            return "454 4.7.0 TLS not available due to temporary reason"
        return await super().handle_exception(error)

    # every reply carries an enhanced status code, except the greeting and EHLO/HELO (RFC 2034)
    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = _REWRITE.get(status, status)
            if status[:1] == "5":
                self._errors += 1
                if self._errors > self.event_handler.max_errors and self.transport is not None:
                    await super().push(status if _HAS_ESC.match(status) else
                                       f"{status[:3]} {_ESC_BY_CODE.get(status[:3], '5.0.0')} {status[4:]}")
                    await super().push("421 4.7.0 Too many errors, closing connection")
                    self.transport.close()
                    return
        if isinstance(status, str) and not self._greeting_or_ehlo and status[:1] in "245" \
                and len(status) > 3 and not _HAS_ESC.match(status):
            code = status[:3]
            esc = _ESC_BY_CODE.get(code, f"{code[0]}.0.0")
            status = f"{code}{status[3]}{esc} {status[4:]}"
        elif isinstance(status, str) and status.startswith("220 ") and self.session and not self.session.host_name:
            self._greeting_or_ehlo = False  # the greeting itself carries no enhanced code; what follows does
        if self._ehlo_buffer is not None:
            self._ehlo_buffer.append(status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n")
            return
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # The EHLO reply goes out in one write, not one per line.
        self._greeting_or_ehlo = True
        self._ehlo_buffer = []
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._greeting_or_ehlo = False
            lines, self._ehlo_buffer = self._ehlo_buffer, None
            if lines:
                self.stream_writer.write(b"".join(lines))
                await self.stream_writer.drain()

    async def smtp_HELO(self, hostname: str) -> None:
        self._greeting_or_ehlo = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._greeting_or_ehlo = False

    async def serve_client(self) -> None:
        handler: SubmissionHandler = self.event_handler
        handler.connected(self)
        self._greeting_or_ehlo = True  # until the 220 greeting is out
        try:
            if await handler.admit(self):
                await self.command_loop()
        finally:
            handler.disconnected(self)
            handler.pipeline.abandon(getattr(self.envelope, "relay_ctx", None))  # QUIT, lost, timed out

    def on_timeout(self) -> None:
        """Idle past the command (or DATA) timeout: say so, as Postfix does, then close."""
        if self.transport is not None and not self.transport.is_closing():
            cast(asyncio.WriteTransport, self.transport).write(
                b"421 4.4.2 " + self.hostname.encode() + b" Error: timeout exceeded\r\n")

    async def smtp_DATA(self, arg: str) -> None:
        # the whole transfer is bounded by smtp.data_timeout (aiosmtpd resets the timer per command only)
        self.reset_timeout(self.event_handler.data_timeout)
        if arg or self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)  # 501/503: nothing will be read
            return
        # What the message may grow to is reserved from the process's DATA budget before the 354, and
        # given back when the transaction ends: answered, refused, lost, timed out or cancelled.
        handler: SubmissionHandler = self.event_handler
        size = self.data_size_limit or handler.pipeline.data_budget.total
        if not handler.pipeline.data_budget.reserve(size):
            metrics.rejected(handler.listener, "data", 452, "4.3.1")
            log.warning("DATA refused: the DATA memory budget is spent", extra={
                "listener": handler.listener, "peer": _peer_ip(self.session) if self.session else None})
            await self.push("452 4.3.1 Insufficient system storage, try again later")
            return
        try:
            await super().smtp_DATA(arg)
        finally:
            handler.pipeline.data_budget.release(size)

    def on_post_data_state(self) -> None:
        # The transaction on the old envelope ends (DATA answered, RSET, EHLO, too much data): unless
        # it was committed, policies give back what it reserved.
        self.event_handler.pipeline.abandon(getattr(getattr(self, "envelope", None), "relay_ctx", None))

    def idle(self) -> bool:
        """No transaction open and no command being handled: waiting for the client's next command."""
        return (self.envelope is None or self.envelope.mail_from is None) and waiting_for_data(self.stream_reader)

    async def shut_down(self) -> None:
        """Graceful shutdown: ``421 4.3.2`` and close (RFC 5321 4.2.2: the service is closing)."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            await asyncio.wait_for(self.push("421 4.3.2 Service shutting down, try again later"), 1.0)
        except (TimeoutError, OSError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()

    async def check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        """AUTH PLAIN/LOGIN: the pipeline decides; failures are counted per client address."""
        assert self.session is not None
        handler: SubmissionHandler = self.event_handler
        ip = _peer_ip(self.session)
        username = login.decode("utf-8", "replace")
        throttle = handler.pipeline.auth_throttle
        if throttle.locked(ip, username):
            metrics.auth_failed(handler.listener)
            log.warning("authentication refused: locked out", extra={"peer": ip, "username": redact(username),
                                                                     "listener": handler.listener})
            return await self._lockout()
        try:
            ident = await handler.pipeline.authenticate(username, password.decode("utf-8", "replace"),
                                                        scopes=SMTP_SCOPES)
        except RelayError as exc:
            handler.failed_logins += 1
            metrics.auth_failed(handler.listener)
            throttle.failure(ip, username)  # past the limit, the next attempt meets the lockout
            log.warning("authentication failed", extra={"peer": ip, "username": redact(username),
                                                        "listener": handler.listener})
            return AuthResult(success=False, handled=False, message=exc.smtp_reply)
        throttle.success(ip, username)
        self.session.relay_identity = ident  # type: ignore[attr-defined]
        return AuthResult(success=True, handled=False, auth_data=ident.account_name)

    async def _lockout(self) -> AuthResult:
        await self.push("421 4.7.0 Too many failed authentication attempts, try again later")
        if self.transport is not None:
            self.transport.close()
        return AuthResult(success=False, handled=True)


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return peer[0] if isinstance(peer, tuple) else str(peer)


class SubmissionHandler:
    """aiosmtpd handler hooks for one listener: translate, call the pipeline, answer."""

    def __init__(self, pipeline: Pipeline, listener: str, *, trusted_only: bool = False) -> None:
        self.pipeline = pipeline
        self.listener = listener
        self.trusted_only = trusted_only
        self.sessions = 0
        self.failed_logins = 0  # (no auth_ prefix: aiosmtpd takes auth_* members for mechanisms)
        self.live: set[RelaySMTP] = set()  # open sessions, for the graceful shutdown
        self.session_options: dict[str, Any] = {}  # what new sessions are built with (SIGHUP updates it)
        self.data_timeout = 600.0
        self.max_errors = 20

    def apply(self, smtp: SmtpSettings) -> None:
        """A reload: the next connections get the new limits and timeouts (open ones keep theirs)."""
        if self.session_options:  # read by the listener's protocol factory on each new connection
            self.session_options["data_size_limit"] = smtp.max_message_size
            self.session_options["timeout"] = smtp.command_timeout
        self.data_timeout, self.max_errors = smtp.data_timeout, smtp.max_errors

    def connected(self, conn: RelaySMTP) -> None:
        self.sessions += 1
        self.live.add(conn)
        metrics.session_opened(self.listener)

    async def admit(self, conn: RelaySMTP) -> bool:
        """Connection limits, then the on_connect policies: False when the client is refused (the
        reply is sent, the connection closed): ``421 4.7.0`` over a limit, ``554``/``421`` from a
        policy, instead of the greeting."""
        assert conn.session is not None
        ip = _peer_ip(conn.session)
        if not self.pipeline.connections.open(ip):
            metrics.rejected(self.listener, "connect", 421, "4.7.0")
            log.warning("connection refused: over the connection limit", extra={"peer": ip, "listener": self.listener})
            await conn.push("421 4.7.0 Too many connections, try again later")
            if conn.transport is not None:
                conn.transport.close()
            return False
        conn.counted_ip = ip
        if not self.pipeline.policies.has("on_connect"):
            return True
        ctx = Context(listener=self.listener, peer=_peer_ip(conn.session))
        try:
            await self.pipeline.connect(ctx)
        except RelayError as exc:
            await conn.push(f"{421 if exc.temporary else 554} {exc.enhanced} {exc.public}")
            if conn.transport is not None:
                conn.transport.close()
            return False
        return True

    def disconnected(self, conn: RelaySMTP) -> None:
        self.sessions -= 1
        self.live.discard(conn)
        if conn.counted_ip is not None:
            self.pipeline.connections.close(conn.counted_ip)
            conn.counted_ip = None

    def rejected(self, phase: str, exc: RelayError, ctx: Context | None) -> str:
        """Count and log one refusal of the pipeline; returns the reply line."""
        metrics.rejected(self.listener, phase, exc.code, exc.enhanced)
        if ctx is not None:
            log.info("%s refused", phase, extra={
                "queue_id": None, "account": ctx.identity.account_name if ctx.identity else None,
                "alias": ctx.alias.email if ctx.alias else None, "pool": ctx.ip_pool, "upstream": None,
                "reply": exc.smtp_reply, "listener": self.listener, "peer": ctx.peer, "reason": exc.reason})
        return exc.smtp_reply

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        responses.insert(-1, "250-ENHANCEDSTATUSCODES")
        return responses

    async def _identity(self, session: Session) -> Identity | None:
        ident = getattr(session, "relay_identity", None)
        if ident is None and self.trusted_only:
            ident = await self.pipeline.trusted_identity(_peer_ip(session))
            session.relay_identity = ident  # type: ignore[attr-defined]
        return ident

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        ident = await self._identity(session)
        if ident is None:
            return RELAY_DENIED.smtp_reply if self.trusted_only else "530 5.7.0 Authentication required"
        transport = server.transport
        ctx = Context(listener=self.listener, peer=_peer_ip(session), identity=ident,
                      smtputf8=any(o.upper() == "SMTPUTF8" for o in mail_options), helo=session.host_name,
                      tls=transport is not None and transport.get_extra_info("ssl_object") is not None)
        try:
            await self.pipeline.mail(ctx, address)
        except RelayError as exc:
            return self.rejected("mail", exc, ctx)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.relay_ctx = ctx  # type: ignore[attr-defined]
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        ctx: Context | None = getattr(envelope, "relay_ctx", None)
        if ctx is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            await self.pipeline.rcpt(ctx, address)
        except RelayError as exc:
            return self.rejected("rcpt", exc, ctx)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ctx: Context | None = getattr(envelope, "relay_ctx", None)
        if ctx is None:
            return "503 5.5.1 Error: need MAIL command"
        try:
            outcome = await self.pipeline.data(ctx, envelope.original_content or b"")
        except RelayError as exc:
            return self.rejected("data", exc, ctx)
        except Exception:
            log.exception("submission failed", extra={"peer": ctx.peer})
            metrics.rejected(self.listener, "data", 451, "4.3.0")
            return "451 4.3.0 Temporary local problem, try again later"
        return f"250 2.0.0 OK queued as {outcome.message_id}"

    async def handle_exception(self, error: Exception) -> str:
        log.exception("SMTP session error")
        return "451 4.3.0 Temporary local problem, try again later"


def tls_failed(listener: str, peer: Any, exc: BaseException | None) -> None:
    """A TLS handshake that failed (a client that does not trust the certificate, a scanner, a plain
    client on 465): one INFO line with the peer and the reason, never a traceback."""
    reason = getattr(exc, "reason", None) or (str(exc) or type(exc).__name__ if exc else "connection closed")
    hint = " (the client does not trust the certificate)" if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
                                                                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN") else ""
    ip = peer[0] if isinstance(peer, tuple) and peer else peer
    log.info("TLS handshake failed: %s%s", reason, hint, extra={"peer": ip, "listener": listener})


class ImplicitTLS(asyncio.Protocol):
    """465: stands in for the session until the TLS handshake is done (see
    :func:`relay.asyncio_compat.tls_server_protocol`), then hands it the TLS transport. A failed
    handshake is logged as on 587 (:func:`tls_failed`); the session never hears of it."""

    def __init__(self, session: RelaySMTP) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.session)
        self.session.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # the handshake failed (logged by the failure callback)


def _bind(hostport: tuple[str, int], reuse_port: bool) -> socket.socket:
    host, port = hostport
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only when proto is TCP;
    # without it, multi-line replies (EHLO) meet Nagle + delayed ACK and cost 40 ms each.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_listener(pipeline: Pipeline, *, name: str, sock: socket.socket, hostname: str,
                         tls_context: ssl.SSLContext, max_message_size: int, timeout: float,
                         data_timeout: float = 600.0,
                         max_errors: int = 20) -> tuple[asyncio.AbstractServer, SubmissionHandler]:
    """Start one listener on an already bound socket: ``submission``, ``smtps`` or ``relay``."""
    handler = SubmissionHandler(pipeline, name, trusted_only=(name == "relay"))
    handler.data_timeout, handler.max_errors = data_timeout, max_errors
    loop = asyncio.get_running_loop()
    common: dict[str, Any] = {"hostname": hostname, "data_size_limit": max_message_size, "enable_SMTPUTF8": True,
                              "decode_data": False, "timeout": timeout, "ident": "Relay ESMTP", "loop": loop}
    handler.session_options = common  # read per connection: a reload (SIGHUP) changes it in place
    listener_options: dict[str, dict[str, Any]] = {
        "submission": {"tls_context": tls_context, "require_starttls": True, "auth_require_tls": True,
                       "auth_required": True},
        "smtps": {"auth_require_tls": False, "auth_required": True},
        "relay": {"auth_require_tls": True, "auth_exclude_mechanism": ("PLAIN", "LOGIN")},
    }
    if name not in listener_options:
        raise ValueError(name)
    options = listener_options[name]

    def factory() -> RelaySMTP:
        return RelaySMTP(handler, **options, **common)  # common read per connection (reload)

    def implicit_tls() -> asyncio.BaseProtocol:
        return tls_server_protocol(ImplicitTLS(factory()), tls_context, timeout=common["timeout"],
                                   on_failure=lambda peer, exc: tls_failed(name, peer, exc))

    server = await loop.create_server(implicit_tls if name == "smtps" else factory, sock=sock)
    return server, handler


__all__ = ["AUTH_FAILED", "MISSING", "RelaySMTP", "SubmissionHandler", "_bind", "serve_listener"]
