"""Dashboard users of an account and their sessions: the rules, once (CLI, JSON routes and dashboard).

- A user belongs to one account with a role: ``owner`` and ``admin`` get the account's full rights
  (:data:`ROLE_SCOPES`, never ``operator``); a ``member`` gets :data:`relay.vocab.READ_SCOPE` alone:
  it reads everything of its account and changes nothing.
- Who manages whom (``by``: the acting session; None is the operator at the CLI): an owner manages
  everyone of its account, an admin manages admins and members, a member nobody. The account's last
  owner is not removed from the dashboard.
- Passwords: argon2 (argon2-cffi), at least :data:`MIN_PASSWORD` characters. Without one, a user gets
  a one-time set-password link (``{public_url}/set-password/{token}``, ``api.password_link_ttl``).
- A login is a random token (the ``sb-access-token`` cookie) stored as its SHA-256 with an expiry
  (``api.session_ttl``). Failures are throttled per client address with the pipeline's AuthThrottle
  (the one SMTP AUTH and API keys count in); an unknown email costs a hash verification too.
- Sessions are looked up in the store on every request: a logout, a removal or a password reset
  ends them at once. Tokens, links and hashes never reach a log line or a repr.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relay.ops.config import Settings
from relay.services.admin import check_email
from relay.store import Store, utcnow
from relay.store.runner import DbRunner
from relay.store.users import UserRec
from relay.throttle import AuthThrottle
from relay.vocab import READ_SCOPE, Expired, Forbidden, Identity, Invalid, NotFound, RelayError

log = logging.getLogger(__name__)

ROLES = ("owner", "admin", "member")
FULL_SCOPES = frozenset({"admin", "aliases", "send", "sandbox"})
ROLE_SCOPES = {"owner": FULL_SCOPES, "admin": FULL_SCOPES, "member": frozenset({READ_SCOPE})}
MANAGES = {"owner": frozenset(ROLES), "admin": frozenset({"admin", "member"}), "member": frozenset()}
MIN_PASSWORD, MAX_PASSWORD = 10, 1024
MAX_TOKEN = 200  # a cookie or link longer than any token we make is not looked up
MAX_HASHING = 2  # argon2 hashes computed at once (each holds 64 MiB): a burst of logins waits, memory is bounded

LOGIN_FAILED = RelayError(535, "5.7.8", "Invalid email or password", http_status=401)
LOGIN_LOCKED = RelayError(421, "4.7.0", "Too many failed authentication attempts, try again later", http_status=429)
BAD_LINK = "This link is invalid or has expired"


@dataclass(frozen=True)
class SessionIdentity:
    """Who is logged in: the :class:`Identity` the routes check (account, the role's scopes) and the user."""

    identity: Identity
    user_id: str
    email: str
    role: str
    expires_at: dt.datetime

    @property
    def read_only(self) -> bool:
        return self.role == "member"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    role = (role or "").strip().lower()
    if role not in ROLES:
        raise Invalid(f"invalid role {role!r}; choose from {', '.join(ROLES)}", field="role")
    return role


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid(f"the password must have at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"the password must have at most {MAX_PASSWORD} characters", field="password")
    return password


def check_manages(by: SessionIdentity | None, account_id: str, role: str) -> None:
    """The acting session may manage a user of ``account_id`` with ``role`` (None: the operator)."""
    if by is None:
        return
    if by.identity.account_id != account_id:
        raise NotFound("no such user")
    if role not in MANAGES.get(by.role, frozenset()):
        raise Forbidden(f"a{'n' if by.role[0] in 'aeiou' else ''} {by.role} cannot manage {role}s")


class Users:
    """Built once by the composition root (:class:`relay.gateway.Gateway`); ``throttle`` is the
    pipeline's AuthThrottle; ``clock`` is injected for tests."""

    def __init__(self, runner: DbRunner, store: Store, settings: Settings, throttle: AuthThrottle, *,
                 clock: Callable[[], dt.datetime] = utcnow, hasher: PasswordHasher | None = None) -> None:
        self.runner = runner
        self.store = store
        self.settings = settings
        self.throttle = throttle
        self.clock = clock
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None  # verified against for unknown emails (about the same time)
        self._hashing = asyncio.Semaphore(MAX_HASHING)
        self._peers: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # address -> its lock, [logins waiting]

    def apply(self, settings: Settings) -> None:
        """A reload: the TTLs and public_url of the next logins and links."""
        self.settings = settings

    # -- secrets -------------------------------------------------------------------------------
    async def _hash(self, password: str) -> str:
        async with self._hashing:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def _check(self, password_hash: str | None, password: str) -> bool:
        async with self._hashing:
            return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
            password_hash = self._dummy
        try:
            return bool(self.hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    async def _new_link(self, user: UserRec, *, clear_password: bool) -> str:
        token = secrets.token_urlsafe(32)
        expires = self.clock() + dt.timedelta(seconds=self.settings.api.password_link_ttl)
        await self.runner.write(self.store.users.reset, user.id, token_hash(token), expires,
                                clear_password=clear_password)
        return f"{self.settings.public_url}/set-password/{token}"

    # -- users ---------------------------------------------------------------------------------
    async def add(self, account: str, email: str, role: str, password: str | None, *,
                  by: SessionIdentity | None = None) -> tuple[UserRec, str | None]:
        """A new user of the account named ``account``. With a password: (the user, None); without:
        (the user, its one-time set-password link, shown once)."""
        email, role = check_email(email), check_role(role)
        if by is not None and by.identity.account_name != account:
            raise Forbidden("users are added to the session's own account only")
        if by is not None:
            check_manages(by, by.identity.account_id, role)
        password_hash = await self._hash(check_password(password)) if password is not None else None
        rec: UserRec = await self.runner.write(self.store.users.create, account, email, role, password_hash, self.clock())
        link = None if password is not None else await self._new_link(rec, clear_password=False)
        log.info("user added", extra={"user": rec.id, "account": rec.account_name, "role": role})
        return rec, link

    async def list(self, account_id: str) -> builtins.list[UserRec]:
        users: builtins.list[UserRec] = await self.runner.read(self.store.users.list_users, account_id)
        return users

    async def get(self, account_id: str, user_id: str) -> UserRec:
        rec: UserRec = await self.runner.read(self.store.users.get, user_id, account_id)
        return rec

    async def by_email(self, email: str) -> UserRec:
        """The user with ``email`` (any account: the operator's CLI), else NotFound."""
        rec = await self.runner.read(self.store.users.find_by_email, (email or "").strip().lower())
        if rec is None:
            raise NotFound(f"no user with the email {email!r}")
        return rec

    async def remove(self, account_id: str, user_id: str, *, by: SessionIdentity | None = None) -> None:
        """Delete the user and its sessions: its cookie gets 401 at once."""
        rec = await self.get(account_id, user_id)
        check_manages(by, account_id, rec.role)
        if by is not None and rec.role == "owner" and \
                await self.runner.read(self.store.users.count_role, account_id, "owner") <= 1:
            raise Forbidden("the account's last owner cannot be removed (the operator can: relay user remove)")
        await self.runner.write(self.store.users.remove, rec.id)
        log.info("user removed", extra={"user": rec.id, "account": rec.account_name})

    async def reset_password(self, account_id: str, user_id: str, *, by: SessionIdentity | None = None) -> str:
        """A new one-time link; the old password, links and sessions stop working."""
        rec = await self.get(account_id, user_id)
        check_manages(by, account_id, rec.role)
        link = await self._new_link(rec, clear_password=True)
        log.info("password reset", extra={"user": rec.id, "account": rec.account_name})
        return link

    async def set_password(self, link_token: str, password: str) -> None:
        """Consume a set-password link: Invalid (400, field ``token``) for an unknown, used or expired link,
        Invalid (field ``password``) for a password too short or too long. Ends the user's sessions."""
        check_password(password)
        if not link_token or len(link_token) > MAX_TOKEN:
            raise Invalid(BAD_LINK, field="token")
        # no argon2 for a link that does not open: anyone may post here, and a stream of junk links would
        # otherwise hold the MAX_HASHING slots every login waits for
        if not await self.runner.read(self.store.users.link_open, token_hash(link_token), self.clock()):
            raise Invalid(BAD_LINK, field="token")
        password_hash = await self._hash(password)
        try:
            user_id = await self.runner.write(self.store.users.consume_link, token_hash(link_token), password_hash,
                                              self.clock())
        except (NotFound, Expired):
            raise Invalid(BAD_LINK, field="token") from None
        log.info("password set", extra={"user": user_id})

    # -- sessions ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, peer: str) -> AsyncIterator[None]:
        """The logins of one client address, one after another: each sees the failures of those before
        it (checked concurrently, a burst of guesses all passed the lockout check before any failed)."""
        lock, waiting = self._peers.setdefault(peer, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                del self._peers[peer]

    async def login(self, email: str, password: str, peer: str) -> tuple[str, dt.datetime]:
        """A new session (its token, shown once as the cookie, and its expiry). LOGIN_FAILED (401) for a
        wrong email or password, counted per client address; LOGIN_LOCKED (429) while it is locked out."""
        async with self._one_at_a_time(peer):
            return await self._login(email, password, peer)

    async def _login(self, email: str, password: str, peer: str) -> tuple[str, dt.datetime]:
        if self.throttle.locked(peer):
            raise LOGIN_LOCKED
        email = (email or "").strip().lower()
        rec = await self.runner.read(self.store.users.find_by_email, email) if 0 < len(email) <= 320 else None
        ok = len(password or "") <= MAX_PASSWORD and await self._check(
            rec.password_hash if rec is not None else None, password or "")
        if rec is None or rec.password_hash is None or not ok:
            self.throttle.failure(peer)
            raise LOGIN_FAILED
        token = secrets.token_urlsafe(32)
        now = self.clock()
        expires = now + dt.timedelta(seconds=self.settings.api.session_ttl)
        await self.runner.write(self.store.users.add_session, token_hash(token), rec.id, now, expires)
        log.info("user logged in", extra={"user": rec.id, "account": rec.account_name})
        return token, expires

    async def logout(self, token: str) -> None:
        if token and len(token) <= MAX_TOKEN:
            await self.runner.write(self.store.users.delete_session, token_hash(token))

    async def identity(self, token: str) -> SessionIdentity | None:
        """The session of a cookie's token, or None (unknown, or expired: then deleted)."""
        if not token or len(token) > MAX_TOKEN:
            return None
        digest = token_hash(token)
        hit = await self.runner.read(self.store.users.session_user, digest)
        if hit is None:
            return None
        rec, expires = hit
        if expires <= self.clock():
            await self.runner.write(self.store.users.delete_session, digest)
            return None
        ident = Identity(rec.account_id, rec.account_name, None, ROLE_SCOPES.get(rec.role, frozenset()))
        return SessionIdentity(ident, rec.id, rec.email, rec.role, expires)

    async def prune(self) -> int:
        """Delete expired sessions and set-password links (housekeeping)."""
        n: int = await self.runner.write(self.store.users.prune, self.clock())
        return n
