"""Dashboard users, their sessions and their one-time set-password links: rows only.

Synchronous, one short transaction per method, frozen records out (never ORM objects). Tokens
arrive here already hashed (SHA-256 hex) and passwords already hashed (argon2): the rules and the
secrets are :class:`relay.services.users.Users`'s.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from relay.store import aware, new_id
from relay.store import models as m
from relay.vocab import Conflict, Expired, NotFound


@dataclass(frozen=True)
class UserRec:
    id: str
    account_id: str
    account_name: str
    email: str
    role: str
    created_at: dt.datetime
    password_hash: str | None = field(default=None, repr=False)

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None


def _user(row: m.User, account_name: str) -> UserRec:
    return UserRec(row.id, row.account_id, account_name, row.email, row.role, aware(row.created_at) or row.created_at,
                   row.password_hash)


_WITH_ACCOUNT = sa.select(m.User, m.Account.name).join(m.Account, m.Account.id == m.User.account_id)


class UserStore:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    # -- users ---------------------------------------------------------------------------------
    def create(self, account: str, email: str, role: str, password_hash: str | None, now: dt.datetime) -> UserRec:
        """A new user of the account named ``account``; Conflict when the email is taken (by any account)."""
        try:
            with self._sessions.begin() as s:
                acc = s.scalar(sa.select(m.Account).where(m.Account.name == account))
                if acc is None:
                    raise NotFound(f"no account named {account!r}")
                if s.scalar(sa.select(m.User.id).where(m.User.email == email)) is not None:
                    raise Conflict(f"a user with the email {email} already exists")
                row = m.User(id=new_id("usr"), account_id=acc.id, email=email, role=role,
                             password_hash=password_hash, created_at=now)
                s.add(row)
                s.flush()
                return _user(row, acc.name)
        except IntegrityError:  # a concurrent add of the same email
            raise Conflict(f"a user with the email {email} already exists") from None

    def find_by_email(self, email: str) -> UserRec | None:
        with self._reads() as s:
            hit = s.execute(_WITH_ACCOUNT.where(m.User.email == email)).first()
            return _user(hit[0], hit[1]) if hit else None

    def get(self, user_id: str, account_id: str | None = None) -> UserRec:
        """One user (of ``account_id`` when given); NotFound otherwise."""
        with self._reads() as s:
            q = _WITH_ACCOUNT.where(m.User.id == user_id)
            if account_id is not None:
                q = q.where(m.User.account_id == account_id)
            hit = s.execute(q).first()
            if hit is None:
                raise NotFound(f"no user {user_id!r}")
            return _user(hit[0], hit[1])

    def list_users(self, account_id: str) -> list[UserRec]:
        with self._reads() as s:
            rows = s.execute(_WITH_ACCOUNT.where(m.User.account_id == account_id).order_by(m.User.email)).all()
            return [_user(r[0], r[1]) for r in rows]

    def count_role(self, account_id: str, role: str) -> int:
        with self._reads() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(m.User)
                            .where(m.User.account_id == account_id, m.User.role == role)) or 0

    def remove(self, user_id: str) -> None:
        """The user, its sessions and links (deleted here too, not only by the foreign keys' cascade)."""
        with self._sessions.begin() as s:
            s.execute(sa.delete(m.UserSession).where(m.UserSession.user_id == user_id))
            s.execute(sa.delete(m.PasswordLink).where(m.PasswordLink.user_id == user_id))
            if s.execute(sa.delete(m.User).where(m.User.id == user_id)).rowcount == 0:
                raise NotFound(f"no user {user_id!r}")

    # -- set-password links -------------------------------------------------------------------
    def reset(self, user_id: str, link_hash: str, expires_at: dt.datetime, *, clear_password: bool) -> None:
        """A new link replaces the user's others; its sessions end (and its password, if ``clear_password``)."""
        with self._sessions.begin() as s:
            s.execute(sa.delete(m.UserSession).where(m.UserSession.user_id == user_id))
            s.execute(sa.delete(m.PasswordLink).where(m.PasswordLink.user_id == user_id))
            if clear_password:
                s.execute(sa.update(m.User).where(m.User.id == user_id).values(password_hash=None))
            s.add(m.PasswordLink(token_hash=link_hash, user_id=user_id, expires_at=expires_at))

    def link_open(self, link_hash: str, now: dt.datetime) -> bool:
        """Whether the link exists and has not expired (a read; :meth:`consume_link` decides again)."""
        with self._reads() as s:
            expires_at = s.scalar(sa.select(m.PasswordLink.expires_at).where(m.PasswordLink.token_hash == link_hash))
        return expires_at is not None and (aware(expires_at) or expires_at) > now

    def consume_link(self, link_hash: str, password_hash: str, now: dt.datetime) -> str:
        """Set the password of the link's user and delete the link (and the user's sessions); returns the
        user's id. NotFound for an unknown link, Expired for one past its time (deleted too)."""
        with self._sessions.begin() as s:
            link = s.get(m.PasswordLink, link_hash)
            if link is None:
                raise NotFound("no such link")
            user_id, expires_at = link.user_id, aware(link.expires_at)
            s.delete(link)
            if expires_at is None or expires_at <= now:
                expired = True
            else:
                expired = False
                s.execute(sa.update(m.User).where(m.User.id == user_id).values(password_hash=password_hash))
                s.execute(sa.delete(m.UserSession).where(m.UserSession.user_id == user_id))
        if expired:
            raise Expired("the link has expired")
        return user_id

    # -- sessions ------------------------------------------------------------------------------
    def add_session(self, token_hash: str, user_id: str, now: dt.datetime, expires_at: dt.datetime) -> None:
        with self._sessions.begin() as s:
            s.add(m.UserSession(token_hash=token_hash, user_id=user_id, created_at=now, expires_at=expires_at))

    def session_user(self, token_hash: str) -> tuple[UserRec, dt.datetime] | None:
        """The session's user and expiry (expired or not), or None."""
        with self._reads() as s:
            hit = s.execute(sa.select(m.User, m.Account.name, m.UserSession.expires_at)
                            .join(m.Account, m.Account.id == m.User.account_id)
                            .join(m.UserSession, m.UserSession.user_id == m.User.id)
                            .where(m.UserSession.token_hash == token_hash)).first()
        if hit is None:
            return None
        return _user(hit[0], hit[1]), aware(hit[2]) or hit[2]

    def delete_session(self, token_hash: str) -> None:
        with self._sessions.begin() as s:
            s.execute(sa.delete(m.UserSession).where(m.UserSession.token_hash == token_hash))

    def prune(self, now: dt.datetime) -> int:
        """Delete expired sessions and set-password links; returns how many."""
        with self._sessions.begin() as s:
            n = s.execute(sa.delete(m.UserSession).where(m.UserSession.expires_at <= now)).rowcount or 0
            n += s.execute(sa.delete(m.PasswordLink).where(m.PasswordLink.expires_at <= now)).rowcount or 0
            return n
