"""The directory's records: frozen views of accounts, API keys, DKIM keys, domains, upstreams and
aliases (never ORM objects, so they cross threads safely), and their converters from rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from relay.store import aware
from relay.store import models as m


@dataclass(frozen=True)
class AccountRec:
    id: str
    name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class KeyRec:
    id: str
    account_id: str
    account_name: str
    key_hash: str = field(repr=False)
    scopes: frozenset[str]
    name: str | None
    created_at: dt.datetime
    revoked: bool


@dataclass(frozen=True)
class DkimKeyRec:
    id: str
    selector: str
    algorithm: str
    private_key_enc: str = field(repr=False)
    public_txt: str
    active: bool
    status: str = "active"  # pending | active | retiring (see DkimKey)
    retire_at: dt.datetime | None = None


@dataclass(frozen=True)
class DomainRec:
    id: str
    account_id: str
    name: str
    verification_token: str
    verified: bool
    created_at: dt.datetime
    keys: tuple[DkimKeyRec, ...] = ()


@dataclass(frozen=True)
class UpstreamRec:
    id: str
    name: str
    ip_pool: str
    host: str
    port: int
    username: str | None
    password_enc: str | None = field(repr=False)
    encryption: str
    verify_tls: bool
    priority: int
    weight: int
    max_connections: int | None
    is_active: bool
    created_at: dt.datetime
    account_id: str | None = None  # the owner of its IP pool; None: the operator


@dataclass(frozen=True)
class PoolRec:
    """An IP pool and who may use it (see :class:`relay.store.models.IpPool`)."""

    name: str
    account_id: str | None  # its owner; None: the operator
    restricted: bool
    granted: frozenset[str]  # account ids, for a restricted operator pool
    created_at: dt.datetime

    def allows(self, account_id: str | None) -> bool:
        """May ``account_id``'s mail go through this pool?"""
        if self.account_id is not None:
            return self.account_id == account_id
        return not self.restricted or account_id in self.granted


@dataclass(frozen=True)
class AliasRec:
    id: str
    account_id: str
    email: str
    name: str | None
    ip_pool: str
    is_default: bool
    verified: bool
    created_at: dt.datetime


def _account(r: m.Account) -> AccountRec:
    return AccountRec(r.id, r.name, aware(r.created_at))


def _key(r: m.ApiKey, account_name: str) -> KeyRec:
    return KeyRec(r.id, r.account_id, account_name, r.key_hash, frozenset(filter(None, r.scopes.split(","))),
                  r.name, aware(r.created_at), r.revoked_at is not None)


def _dkim(r: m.DkimKey) -> DkimKeyRec:
    return DkimKeyRec(r.id, r.selector, r.algorithm, r.private_key_enc, r.public_txt, r.active, r.status,
                      aware(r.retire_at))


def _upstream(r: m.Upstream, owner: str | None = None) -> UpstreamRec:
    return UpstreamRec(r.id, r.name, r.ip_pool, r.host, r.port, r.username, r.password_enc, r.encryption,
                       r.verify_tls, r.priority, r.weight, r.max_connections, r.is_active, aware(r.created_at),
                       owner)


def _alias(r: m.Alias) -> AliasRec:
    return AliasRec(r.id, r.account_id, r.email, r.name, r.ip_pool, r.is_default, r.verified_at is not None,
                    aware(r.created_at))
