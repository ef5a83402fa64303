"""Who may send what: accounts, API keys, domains and DKIM keys, IP pools, upstreams, aliases.

Synchronous; every method opens its own short transaction and returns frozen records, never ORM
objects, so results cross threads safely. Secrets arrive here already encrypted.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from relay.vocab import Conflict, Expired, Invalid, NotFound
from relay.store import aware, new_id, utcnow
from relay.store import models as m
from relay.store import ip_pools as pools
from relay.store.records import (  # the records are the directory's vocabulary: importable from here too
    AccountRec,
    AliasRec,
    DkimKeyRec,  # noqa: F401
    DomainRec,
    KeyRec,
    UpstreamRec,
    _account,
    _alias,
    _dkim,
    _key,
    _upstream,
)


DOMAIN_TAKEN = "domain is already verified by another account"


def _owned(s: Session, rows: list[m.Upstream]) -> list[UpstreamRec]:
    """Upstream records with their owner (the owner of their IP pool)."""
    names = {r.ip_pool for r in rows}
    owners: dict[str, str | None] = {}
    if names:
        owners = {n: a for n, a in s.execute(sa.select(m.IpPool.name, m.IpPool.account_id)
                                             .where(m.IpPool.name.in_(names)))}
    return [_upstream(r, owners.get(r.ip_pool)) for r in rows]


class Directory:
    def __init__(self, sessions: sessionmaker[Session], reads: sessionmaker[Session] | None = None) -> None:
        self._sessions = sessions
        self._reads = reads or sessions

    def sealed_samples(self) -> list[tuple[str, str, str]]:
        """A few secrets as stored (what, token, aad): the newest DKIM private key and upstream
        password, to check at start that the master key opens this store's secrets."""
        with self._reads() as s:
            out = []
            dkim = s.execute(sa.select(m.DkimKey.private_key_enc, m.Domain.name).join(m.Domain)
                             .order_by(m.DkimKey.created_at.desc()).limit(1)).first()
            if dkim is not None:
                out.append(("a DKIM private key", dkim[0], dkim[1]))
            up = s.execute(sa.select(m.Upstream.password_enc, m.Upstream.name)
                           .where(m.Upstream.password_enc.is_not(None))
                           .order_by(m.Upstream.created_at.desc()).limit(1)).first()
            if up is not None:
                out.append(("an upstream password", up[0], up[1]))
            return out

    # -- accounts -------------------------------------------------------------------------
    def _account_row(self, s: Session, name: str) -> m.Account:
        row = s.scalar(sa.select(m.Account).where(m.Account.name == name))
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return row

    def create_account(self, name: str) -> AccountRec:
        with self._sessions.begin() as s:
            if s.scalar(sa.select(m.Account.id).where(m.Account.name == name)):
                raise Conflict(f"account {name!r} exists already")
            row = m.Account(id=new_id("acc"), name=name, created_at=utcnow())
            s.add(row)
            return _account(row)

    def get_account(self, name: str) -> AccountRec:
        with self._reads() as s:
            return _account(self._account_row(s, name))

    def get_account_by_id(self, account_id: str) -> AccountRec:
        with self._reads() as s:
            row = s.get(m.Account, account_id)
            if row is None:
                raise NotFound(f"no account {account_id!r}")
            return _account(row)

    def list_accounts(self) -> list[AccountRec]:
        with self._reads() as s:
            return [_account(r) for r in s.scalars(sa.select(m.Account).order_by(m.Account.name))]

    def remove_account(self, name: str) -> None:
        """The account and everything it owns: its aliases, and its IP pools with their upstreams."""
        with self._sessions.begin() as s:
            acc = self._account_row(s, name)
            own = sa.select(m.IpPool.name).where(m.IpPool.account_id == acc.id)
            s.execute(sa.delete(m.Alias).where(m.Alias.account_id == acc.id))
            s.execute(sa.delete(m.Upstream).where(m.Upstream.ip_pool.in_(own)))
            s.execute(sa.delete(m.IpPoolGrant).where(sa.or_(m.IpPoolGrant.account_id == acc.id,
                                                            m.IpPoolGrant.ip_pool.in_(own))))
            s.execute(sa.delete(m.IpPool).where(m.IpPool.account_id == acc.id))
            s.delete(acc)

    # -- API keys -------------------------------------------------------------------------
    def create_api_key(self, account: str, key_id: str, key_hash: str, scopes: list[str],
                       name: str | None = None) -> KeyRec:
        with self._sessions.begin() as s:
            acc = self._account_row(s, account)
            row = m.ApiKey(id=key_id, account_id=acc.id, key_hash=key_hash, scopes=",".join(scopes),
                           name=name, created_at=utcnow())
            s.add(row)
            return _key(row, acc.name)

    def find_api_key(self, key_id: str) -> KeyRec | None:
        with self._reads() as s:
            row = s.execute(sa.select(m.ApiKey, m.Account.name).join(m.Account)
                            .where(m.ApiKey.id == key_id)).first()
            return _key(row[0], row[1]) if row else None

    def list_api_keys(self, account: str | None = None) -> list[KeyRec]:
        with self._reads() as s:
            q = sa.select(m.ApiKey, m.Account.name).join(m.Account).order_by(m.ApiKey.created_at)
            if account:
                q = q.where(m.Account.name == account)
            return [_key(k, n) for k, n in s.execute(q)]

    def revoke_api_key(self, key_id: str) -> None:
        with self._sessions.begin() as s:
            row = s.get(m.ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            row.revoked_at = row.revoked_at or utcnow()

    # -- domains and DKIM keys ------------------------------------------------------------
    def _domain(self, s: Session, row: m.Domain) -> DomainRec:
        keys = s.scalars(sa.select(m.DkimKey).where(m.DkimKey.domain_id == row.id).order_by(m.DkimKey.created_at))
        return DomainRec(row.id, row.account_id, row.name, row.verification_token, row.verified_at is not None,
                         aware(row.created_at), tuple(_dkim(k) for k in keys))

    def add_domain(self, account: str, name: str, token: str,
                   keys: list[tuple[str, str, str, str]]) -> DomainRec:
        """The account's claim on ``name``. ``keys``: (selector, algorithm, encrypted private key, TXT).

        Another account's unverified claim does not matter (nor is it revealed); a name verified by
        another account is Conflict(:data:`DOMAIN_TAKEN`), which names no account."""
        with self._sessions.begin() as s:
            acc = self._account_row(s, account)
            claims = s.execute(sa.select(m.Domain.account_id, m.Domain.verified_at).where(m.Domain.name == name)).all()
            if any(a == acc.id for a, _ in claims):
                raise Conflict(f"domain {name!r} exists already")
            if any(v is not None for _, v in claims):
                raise Conflict(DOMAIN_TAKEN)
            now = utcnow()
            row = m.Domain(id=new_id("dom"), account_id=acc.id, name=name, verification_token=token,
                           created_at=now)
            s.add(row)
            try:
                s.flush()
            except IntegrityError:  # the same account, concurrently
                raise Conflict(f"domain {name!r} exists already") from None
            for selector, algorithm, enc, txt in keys:
                s.add(m.DkimKey(id=new_id("dkim"), domain_id=row.id, selector=selector, algorithm=algorithm,
                                private_key_enc=enc, public_txt=txt, active=True, created_at=now))
            s.flush()
            return self._domain(s, row)

    def get_domain(self, name: str, account: str | None = None, *, account_id: str | None = None) -> DomainRec:
        """One claim on ``name``: the account's (by name or id) if given; else the verified claim,
        else the only claim. Several unverified claims and no account: Invalid (name the account)."""
        with self._reads() as s:
            q = sa.select(m.Domain).where(m.Domain.name == name).order_by(m.Domain.created_at)
            if account is not None:
                acc = self._account_row(s, account)
                q = q.where(m.Domain.account_id == acc.id)
            elif account_id is not None:
                q = q.where(m.Domain.account_id == account_id)
            rows = s.scalars(q).all()
            verified = [r for r in rows if r.verified_at is not None]
            if verified or len(rows) == 1:
                return self._domain(s, (verified or rows)[0])
            if not rows:
                raise NotFound(f"no domain {name!r}" + (f" for account {account!r}" if account else ""))
            names = sorted(a.name for a in s.scalars(sa.select(m.Account).where(
                m.Account.id.in_([r.account_id for r in rows]))))
            raise Invalid(f"domain {name!r} is claimed by several accounts ({', '.join(names)}): name one "
                          "with --account", field="account")

    def find_domain(self, name: str) -> DomainRec | None:
        """The verified claim on ``name`` (its owner's), or None: what signing and alias checks use.
        An unverified claim is never returned here."""
        with self._reads() as s:
            row = s.scalar(sa.select(m.Domain).where(m.Domain.name == name, m.Domain.verified_at.is_not(None)))
            return self._domain(s, row) if row is not None else None

    def list_domains(self, account: str | None = None) -> list[DomainRec]:
        with self._reads() as s:
            q = sa.select(m.Domain).order_by(m.Domain.name, m.Domain.created_at)
            if account:
                q = q.join(m.Account).where(m.Account.name == account)
            return [self._domain(s, r) for r in s.scalars(q)]

    def _domain_row(self, s: Session, domain_id: str) -> m.Domain:
        row = s.get(m.Domain, domain_id)
        if row is None:
            raise NotFound(f"no domain {domain_id!r}")
        return row

    def mark_domain_verified(self, domain_id: str) -> DomainRec:
        """The claim ``domain_id`` owns its name from now on; Conflict(:data:`DOMAIN_TAKEN`) when another
        account's claim was verified first (its ownership never moves)."""
        with self._sessions.begin() as s:
            row = self._domain_row(s, domain_id)
            if row.verified_at is None:
                owner = s.scalar(sa.select(m.Domain.id).where(m.Domain.name == row.name, m.Domain.id != row.id,
                                                              m.Domain.verified_at.is_not(None)))
                if owner is not None:
                    raise Conflict(DOMAIN_TAKEN)
                row.verified_at = utcnow()
                try:
                    s.flush()
                except IntegrityError:  # another account verified it concurrently (uq_domains_verified_name)
                    raise Conflict(DOMAIN_TAKEN) from None
            return self._domain(s, row)

    def remove_domain(self, domain_id: str) -> None:
        """One claim and its DKIM keys; Conflict while the claim's account has aliases on the domain."""
        with self._sessions.begin() as s:
            row = self._domain_row(s, domain_id)
            used = s.scalar(sa.select(sa.func.count()).select_from(m.Alias)
                            .where(m.Alias.account_id == row.account_id, m.Alias.email.like(f"%@{row.name}")))
            if used:
                raise Conflict(f"domain {row.name!r} still has {used} alias(es); remove them first")
            s.execute(sa.delete(m.DkimKey).where(m.DkimKey.domain_id == row.id))
            s.delete(row)

    # -- IP pools and upstreams -----------------------------------------------------------
    def ensure_pool(self, name: str) -> None:
        """An operator pool ``name`` exists (nothing changes when it does, whoever owns it)."""
        with self._sessions.begin() as s:
            pools._row(s, name)

    def list_ip_pools(self) -> list[tuple[str, dt.datetime]]:
        with self._reads() as s:
            return [(p.name, aware(p.created_at)) for p in s.scalars(sa.select(m.IpPool).order_by(m.IpPool.name))]

    def add_upstream(self, *, name: str, ip_pool: str, host: str, port: int, encryption: str,
                     username: str | None, password_enc: str | None, verify_tls: bool = True,
                     priority: int = 0, weight: int = 1, max_connections: int | None = None,
                     is_active: bool = True, owner: str | None = None) -> UpstreamRec:
        """A new upstream of ``owner`` (an account id; None: the operator), in a pool of the same owner."""
        with self._sessions.begin() as s:
            if s.scalar(sa.select(m.Upstream.id).where(m.Upstream.name == name)):
                raise Conflict(f"upstream {name!r} exists already")
            pools.claim(s, ip_pool, owner)
            row = m.Upstream(id=new_id("smtp"), name=name, ip_pool=ip_pool, host=host, port=port,
                             username=username, password_enc=password_enc, encryption=encryption,
                             verify_tls=verify_tls, priority=priority, weight=weight,
                             max_connections=max_connections, is_active=is_active, created_at=utcnow())
            s.add(row)
            return _upstream(row, owner)

    def get_upstream(self, name_or_id: str) -> UpstreamRec:
        with self._reads() as s:
            row = s.scalar(sa.select(m.Upstream).where(sa.or_(m.Upstream.name == name_or_id,
                                                              m.Upstream.id == name_or_id)))
            if row is None:
                raise NotFound(f"no upstream {name_or_id!r}")
            return _owned(s, [row])[0]

    def list_upstreams(self, ip_pool: str | None = None, *, account_id: str | None = None) -> list[UpstreamRec]:
        """Every upstream, or those of ``ip_pool``, or (``account_id``) those of that account's pools."""
        with self._reads() as s:
            q = sa.select(m.Upstream).order_by(m.Upstream.ip_pool, m.Upstream.priority, m.Upstream.name)
            if ip_pool:
                q = q.where(m.Upstream.ip_pool == ip_pool)
            if account_id is not None:
                q = q.where(m.Upstream.ip_pool.in_(sa.select(m.IpPool.name).where(m.IpPool.account_id == account_id)))
            return _owned(s, list(s.scalars(q)))

    def remove_upstream(self, name_or_id: str) -> None:
        with self._sessions.begin() as s:
            row = s.scalar(sa.select(m.Upstream).where(sa.or_(m.Upstream.name == name_or_id,
                                                              m.Upstream.id == name_or_id)))
            if row is None:
                raise NotFound(f"no upstream {name_or_id!r}")
            s.delete(row)

    # -- aliases --------------------------------------------------------------------------
    def add_alias(self, *, account: str, email: str, name: str | None, ip_pool: str, is_default: bool,
                  token: str) -> AliasRec:
        with self._sessions.begin() as s:
            acc = self._account_row(s, account)
            if s.scalar(sa.select(m.Alias.id).where(m.Alias.email == email)):
                raise Conflict(f"alias {email!r} exists already")
            pools.check_usable(s, ip_pool, acc.id)
            if is_default:
                s.execute(sa.update(m.Alias).where(m.Alias.account_id == acc.id).values(is_default=False))
            now = utcnow()
            row = m.Alias(id=new_id("ali"), account_id=acc.id, email=email, name=name, ip_pool=ip_pool,
                          is_default=is_default, verification_token=token, verification_sent_at=now, created_at=now)
            s.add(row)
            return _alias(row)

    def find_alias(self, email: str) -> AliasRec | None:
        with self._reads() as s:
            row = s.scalar(sa.select(m.Alias).where(m.Alias.email == email.lower()))
            return _alias(row) if row else None

    def get_alias(self, email_or_id: str) -> AliasRec:
        with self._reads() as s:
            row = s.scalar(sa.select(m.Alias).where(sa.or_(m.Alias.email == email_or_id.lower(),
                                                            m.Alias.id == email_or_id)))
            if row is None:
                raise NotFound(f"no alias {email_or_id!r}")
            return _alias(row)

    def list_aliases(self, account: str | None = None) -> list[AliasRec]:
        with self._reads() as s:
            q = sa.select(m.Alias).order_by(m.Alias.email)
            if account:
                q = q.join(m.Account).where(m.Account.name == account)
            return [_alias(r) for r in s.scalars(q)]

    def verify_alias(self, *, email: str | None = None, token: str | None = None,
                     issued_after: dt.datetime | None = None) -> AliasRec:
        """Mark an alias verified, by address (sysadmin override) or by its emailed token. A token
        issued before ``issued_after`` is Expired (and stays unused); an unknown one NotFound."""
        with self._sessions.begin() as s:
            q = sa.select(m.Alias)
            q = q.where(m.Alias.email == email.lower()) if email else q.where(m.Alias.verification_token == token)
            row = s.scalar(q) if (email or token) else None
            if row is None:
                raise NotFound("no such alias or verification link")
            if token and not email and issued_after is not None and \
                    (row.verification_sent_at is None or aware(row.verification_sent_at) < issued_after):
                raise Expired("this verification link has expired")
            row.verified_at = row.verified_at or utcnow()
            row.verification_token = None
            return _alias(row)

    def alias_by_token(self, token: str) -> tuple[AliasRec, dt.datetime | None] | None:
        """The unverified alias a verification token was sent for, and when it was sent (None: unknown)."""
        if not token:
            return None
        with self._reads() as s:
            row = s.scalar(sa.select(m.Alias).where(m.Alias.verification_token == token))
            return (_alias(row), aware(row.verification_sent_at)) if row is not None else None

    def renew_alias_token(self, alias_id: str, token: str) -> AliasRec:
        """A new verification token for an unverified alias, issued now (the old link stops working)."""
        with self._sessions.begin() as s:
            row = s.get(m.Alias, alias_id)
            if row is None:
                raise NotFound(f"no alias {alias_id!r}")
            if row.verified_at is not None:
                raise Conflict(f"alias {row.email!r} is verified already")
            row.verification_token, row.verification_sent_at = token, utcnow()
            return _alias(row)

    def remove_alias(self, email_or_id: str) -> None:
        with self._sessions.begin() as s:
            row = s.scalar(sa.select(m.Alias).where(sa.or_(m.Alias.email == email_or_id.lower(),
                                                            m.Alias.id == email_or_id)))
            if row is None:
                raise NotFound(f"no alias {email_or_id!r}")
            s.delete(row)

    # -- for the HTTP API: lookups by id, updates, DKIM rotation ----------------------------
    def get_domain_by_id(self, domain_id: str) -> DomainRec:
        with self._reads() as s:
            row = s.get(m.Domain, domain_id)
            if row is None:
                raise NotFound(f"no domain {domain_id!r}")
            return self._domain(s, row)

    def add_dkim_keys(self, domain_id: str, keys: list[tuple[str, str, str, str]],
                      status: str = "pending") -> DomainRec:
        """New keys (selector, algorithm, encrypted private key, TXT) of one claim that do not sign yet."""
        with self._sessions.begin() as s:
            row = self._domain_row(s, domain_id)
            now = utcnow()
            for selector, algorithm, enc, txt in keys:
                s.add(m.DkimKey(id=new_id("dkim"), domain_id=row.id, selector=selector, algorithm=algorithm,
                                private_key_enc=enc, public_txt=txt, active=status == "active", status=status,
                                created_at=now))
            try:
                s.flush()
            except IntegrityError:
                raise Conflict(f"DKIM selector exists already for {row.name!r}") from None
            return self._domain(s, row)

    def activate_dkim(self, domain_id: str, selectors: list[str], retire_at: dt.datetime) -> DomainRec:
        """The pending ``selectors`` sign from now on; the keys that signed until now retire at ``retire_at``."""
        with self._sessions.begin() as s:
            row = self._domain_row(s, domain_id)
            keys = s.scalars(sa.select(m.DkimKey).where(m.DkimKey.domain_id == row.id)).all()
            for k in keys:
                if k.selector in selectors and k.status == "pending":
                    k.status, k.active, k.retire_at = "active", True, None
                elif k.status == "active" and k.selector not in selectors:
                    k.status, k.active, k.retire_at = "retiring", False, retire_at
            s.flush()
            return self._domain(s, row)

    def drop_retired_dkim(self, now: dt.datetime) -> int:
        """Delete keys whose grace period is over (their DNS records may then be removed)."""
        with self._sessions.begin() as s:
            return s.execute(sa.delete(m.DkimKey).where(m.DkimKey.status == "retiring", m.DkimKey.retire_at <= now),
                             execution_options={"synchronize_session": False}).rowcount

    def domains_rotating(self) -> list[DomainRec]:
        """Domains with a pending or retiring DKIM key (the rotation task's work)."""
        with self._reads() as s:
            ids = sa.select(m.DkimKey.domain_id).where(m.DkimKey.status.in_(("pending", "retiring")))
            return [self._domain(s, r) for r in s.scalars(sa.select(m.Domain).where(m.Domain.id.in_(ids)))]

    def update_upstream(self, upstream_id: str, **values: object) -> UpstreamRec:
        """Change the given columns of one upstream (the caller validated and encrypted them)."""
        with self._sessions.begin() as s:
            row = s.get(m.Upstream, upstream_id)
            if row is None:
                raise NotFound(f"no upstream {upstream_id!r}")
            name = values.get("name")
            if name is not None and name != row.name and \
                    s.scalar(sa.select(m.Upstream.id).where(m.Upstream.name == name)):
                raise Conflict(f"upstream {name!r} exists already")
            pool = values.get("ip_pool")
            owner = s.scalar(sa.select(m.IpPool.account_id).where(m.IpPool.name == row.ip_pool))
            if pool is not None and pool != row.ip_pool:
                pools.claim(s, str(pool), owner)  # an upstream stays its owner's
            for column, value in values.items():
                setattr(row, column, value)
            s.flush()
            return _upstream(row, owner)

    def update_alias(self, alias_id: str, **values: object) -> AliasRec:
        """Change name, is_default or ip_pool (nothing else changes after creation); one default per account."""
        with self._sessions.begin() as s:
            row = s.get(m.Alias, alias_id)
            if row is None:
                raise NotFound(f"no alias {alias_id!r}")
            pool = values.get("ip_pool")
            if pool is not None:
                pools.check_usable(s, str(pool), row.account_id)
            if values.get("is_default"):
                s.execute(sa.update(m.Alias).where(m.Alias.account_id == row.account_id, m.Alias.id != row.id)
                          .values(is_default=False), execution_options={"synchronize_session": False})
            for column in ("name", "is_default", "ip_pool"):
                if column in values:
                    setattr(row, column, values[column])
            s.flush()
            return _alias(row)

    def alias_pending_mail(self, alias_id: str) -> int:
        """Recipients of queued mail (queued, deferred, delivering) sent as this alias."""
        with self._reads() as s:
            return s.scalar(sa.select(sa.func.count()).select_from(m.Recipient).join(m.Message)
                            .where(m.Message.alias_id == alias_id,
                                   m.Recipient.state.in_(("queued", "deferred", "delivering")))) or 0
