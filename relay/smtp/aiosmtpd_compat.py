"""The only module that touches aiosmtpd's private names (written for :data:`SUPPORTED`).

The rest of :mod:`relay.smtp` subclasses the two classes here and uses public names only:

- :class:`SMTPCompat`: aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` with its private state behind
  public accessors (``stream_reader``, ``stream_writer``, ``decode_data``, ``reset_timeout()``,
  ``call_handler_hook()``, ``set_post_data_state()``) and its private methods turned into hooks a
  subclass overrides (``serve_client()`` around ``command_loop()``, ``on_timeout()``,
  ``on_post_data_state()``). With no hook overridden it behaves as aiosmtpd's SMTP.
- :class:`RelaySMTPBase`: the base of the gateway's sessions. Its ``__init__`` sets exactly the
  state aiosmtpd 1.4's does, with the handler/method tables taken from a cache (aiosmtpd inspects
  the class and the handler again at every connection, ~5% of the CPU per message); AUTH
  credentials are checked asynchronously by ``check_credentials()``; MAIL/RCPT addresses of the
  plain ``<local@domain>`` form are split by one regular expression (tests/gateway/test_fuzz.py compares
  :func:`getaddr` with :func:`library_getaddr`, aiosmtpd's own parser).

:func:`check` compares the installed aiosmtpd with :data:`SUPPORTED` at start-up.

Process-wide, importing this module replaces ``aiosmtpd.smtp.sanitized_log`` (see
:func:`_quiet_sanitized_log`): aiosmtpd looks it up as a module global from its command loop, so
there is no per-session way to change it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    LoginPassword,
    _AuthMechAttr,
    login_always_fail,
)

from relay.ops.versions import require

#: The aiosmtpd releases this module was written for: at least the first, below the second.
SUPPORTED: tuple[tuple[int, ...], tuple[int, ...]] = ((1, 4, 6), (1, 5))

# On 465 the transport is TLS from the first byte, so aiosmtpd's "AUTH without TLS" warning is moot.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")


# -- the version check ------------------------------------------------------------------------------


def check() -> str:
    """Refuse to start with an aiosmtpd whose internals this module was not written for."""
    low, high = SUPPORTED
    return require("aiosmtpd", low, high, "relay.smtp.aiosmtpd_compat")


# -- sanitized_log ----------------------------------------------------------------------------------

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_library_sanitized_log = getattr(aiosmtpd.smtp.sanitized_log, "__wrapped__", aiosmtpd.smtp.sanitized_log)


def _quiet_sanitized_log(func: Any, msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd logs every command line through ``sanitized_log``, which masks AUTH data before it
    asks the logger whether the level is on at all. Ask first (two calls per command saved)."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _library_sanitized_log(func, msg, *args, **kwargs)


_quiet_sanitized_log.__wrapped__ = _library_sanitized_log  # type: ignore[attr-defined]
aiosmtpd.smtp.sanitized_log = _quiet_sanitized_log


# -- MAIL/RCPT addresses ----------------------------------------------------------------------------

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_ADDR = re.compile(rf"[ \t]*<(({_ATOM}(?:\.{_ATOM})*)@{_LABEL}(?:\.{_LABEL})*)>[ \t]*")


def library_getaddr(smtp: Any, arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's own address parser (``smtp`` needs a ``local_part_limit``)."""
    return SMTP._getaddr(smtp, arg)


def getaddr(smtp: Any, arg: str) -> tuple[str | None, str | None]:
    """``<local@domain> PARAMS`` with a plain dot-atom address (nearly every MAIL and RCPT) is
    split by one regular expression; anything else goes to aiosmtpd's RFC 5322 parser, which
    gives the same result at ~10x the cost."""
    m = _PLAIN_ADDR.match(arg)
    if m is None or "(" in arg or (smtp.local_part_limit and m.end(2) - m.start(2) > smtp.local_part_limit):
        return SMTP._getaddr(smtp, arg)
    return m.group(1), arg[m.end():]


# -- the protocol engine ----------------------------------------------------------------------------


class SMTPCompat(SMTP):
    """aiosmtpd's SMTP with public names for the private parts :mod:`relay.smtp` uses."""

    @property
    def stream_reader(self) -> asyncio.StreamReader:
        """The client's bytes (set when the connection is made)."""
        return self._reader

    @property
    def stream_writer(self) -> asyncio.StreamWriter:
        return self._writer

    @property
    def decode_data(self) -> bool:
        """DATA handed to the handler as str (True) or bytes (False)."""
        return self._decode_data

    def reset_timeout(self, duration: float | None = None) -> None:
        """Restart the idle timer: ``duration`` seconds, or the command timeout."""
        self._reset_timeout(duration)

    async def call_handler_hook(self, command: str, *args: Any) -> Any:
        """The handler's ``handle_<command>`` hook, or MISSING if it has none."""
        return await self._call_handler_hook(command, *args)

    def set_post_data_state(self) -> None:
        """End the transaction: a fresh envelope (``on_post_data_state()`` runs first)."""
        self._set_post_data_state()

    async def command_loop(self) -> None:
        """aiosmtpd's session: the greeting, then one command after another until the end."""
        await SMTP._handle_client(self)

    # hooks: override these, not aiosmtpd's private methods

    async def serve_client(self) -> None:
        """The task of one connection; a subclass wraps ``command_loop()``."""
        await self.command_loop()

    def on_timeout(self) -> None:
        """The idle timer fired; aiosmtpd closes the transport right after this returns."""

    def on_post_data_state(self) -> None:
        """The transaction on the current envelope is about to end (DATA answered, RSET, HELO/EHLO,
        STARTTLS, a refused DATA); ``self.envelope`` is still the old one."""

    async def _handle_client(self) -> None:
        await self.serve_client()

    def _timeout_cb(self) -> None:
        self.on_timeout()
        SMTP._timeout_cb(self)

    def _set_post_data_state(self) -> None:
        self.on_post_data_state()
        SMTP._set_post_data_state(self)


class PendingCredentials:
    """What aiosmtpd's PLAIN/LOGIN parsers hand back: checked asynchronously by check_credentials()."""

    __slots__ = ("login", "password")

    def __init__(self, creds: LoginPassword) -> None:
        self.login, self.password = creds.login, creds.password

    def __repr__(self) -> str:
        return "PendingCredentials(***)"


_NAMES: dict[tuple[type, type, tuple[str, ...]], tuple[tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...]]] = {}
# The handler's bound hooks are cached on the handler itself: a table held anywhere else would keep
# the handler (and everything it holds) alive through the bound methods, for the process's lifetime.
_HOOK_TABLES = "_aiosmtpd_compat_hook_tables"


def _introspect(cls: type, handler: Any, excluded: tuple[str, ...]):
    """What aiosmtpd's __init__ finds by inspect.getmembers()/dir() on every connection, found once."""
    key = (cls, type(handler), excluded)
    names = _NAMES.get(key)
    if names is None:
        auth = tuple((getattr(getattr(cls, n), "__auth_mechanism_name__", n[5:].replace("__", "-")), n)
                     for n in dir(cls) if n.startswith("auth_") and callable(getattr(cls, n)))
        names = (tuple((m, n) for m, n in auth if m not in excluded),
                 tuple(n[7:] for n in dir(handler) if n.startswith("handle_")),
                 tuple(n[5:] for n in dir(cls) if n.startswith("smtp_")))
        _NAMES[key] = names
    return names


def _handler_hooks(handler: Any, hooks: tuple[str, ...]) -> dict[str, Any]:
    """The handler's bound ``handle_*`` hooks: the same for every session of one handler."""
    tables = handler.__dict__.get(_HOOK_TABLES)
    if tables is None:
        tables = handler.__dict__[_HOOK_TABLES] = {}
    table = tables.get(hooks)
    if table is None:
        table = tables[hooks] = {name: getattr(handler, "handle_" + name) for name in hooks}
    return table


class _Commands(Mapping):
    """aiosmtpd's command table (name -> bound ``smtp_*`` method), binding only the commands a
    session uses instead of all ~20 at every connection."""

    __slots__ = ("_names", "_session")

    def __init__(self, session: SMTP, names: tuple[str, ...]) -> None:
        self._session = session
        self._names = names

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        return getattr(self._session, "smtp_" + name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class RelaySMTPBase(SMTPCompat):
    """The gateway's session base: aiosmtpd 1.4's state set from a cache, async AUTH, fast addresses."""

    def __init__(self, handler: Any, *, loop: asyncio.AbstractEventLoop, hostname: str, ident: str,
                 data_size_limit: int | None, enable_SMTPUTF8: bool = True, decode_data: bool = False,
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False, timeout: float = 300,
                 auth_required: bool = False, auth_require_tls: bool = True,
                 auth_exclude_mechanism: tuple[str, ...] = ()) -> None:
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=loop)
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._auth_required = auth_required
        auth, hooks, commands = _introspect(type(self), handler, tuple(auth_exclude_mechanism))
        self._auth_methods = {mech: _AuthMechAttr(getattr(self, name), True) for mech, name in auth}
        self._handle_hooks = _handler_hooks(handler, hooks)
        self._ehlo_hook_ver = "new" if "EHLO" in self._handle_hooks else None
        self._smtp_methods = _Commands(self, commands)  # type: ignore[assignment]  # (read as a Mapping)
        self._enforce_call_limit = False

    _getaddr = getaddr

    async def check_credentials(self, login: bytes, password: bytes) -> AuthResult:
        """AUTH PLAIN/LOGIN gave these credentials: the hook that decides (default: refuse)."""
        return AuthResult(success=False, handled=False)

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, auth_data=PendingCredentials(auth_data))

    async def _check_pending(self, result: AuthResult) -> AuthResult:
        pending = result.auth_data
        if not isinstance(pending, PendingCredentials):
            return result  # the client aborted, or sent what does not parse: aiosmtpd's reply
        return await self.check_credentials(pending.login, pending.password)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_pending(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_pending(await super().auth_LOGIN(_, args))


__all__ = ["SUPPORTED", "PendingCredentials", "RelaySMTPBase", "SMTPCompat", "check", "getaddr",
           "library_getaddr"]
