"""Administrative operations shared by the CLI and the HTTP API (one implementation of each rule).

Synchronous: the CLI calls it directly, the API through the store's thread runner. It generates
and encrypts secrets, checks the rules (an alias lives on a verified domain of its account...) and
queues the alias verification email as system mail, which the running gateway delivers.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets as pysecrets
from dataclasses import dataclass

from relay.ops.config import Settings
from relay.secrets import MasterKey, generate_api_key
from relay.store import Store, utcnow
from relay.store.directory import DOMAIN_TAKEN, AliasRec, DomainRec, KeyRec, UpstreamRec
from relay.store.records import PoolRec
from relay.store.queue import NewMessage
from relay.submission import dkim, message
from relay.vocab import DEFAULT_IP_POOL, new_queue_id
from relay.vocab import Conflict, Expired, Forbidden, Invalid, NotFound, Unavailable

SCOPES = ("send", "send:transactional", "send:marketing", "sandbox", "aliases", "admin", "operator")
CLI_ONLY_SCOPES = frozenset({"operator"})  # the gateway's administrator: never granted through the API
ENCRYPTIONS = ("tls", "ssl", "none")
VERIFY_PREFIX = "_relay-verification"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"\\]{1,64}@([a-z0-9-]+\.)+[a-z0-9-]{2,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_UPSTREAM_NAME = re.compile(r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,198}[^\s\x00-\x1f\x7f])?$")


@dataclass(frozen=True)
class DnsRecord:
    type: str
    name: str
    value: str
    purpose: str


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value or ""):
        raise Invalid(f"invalid {what} {value!r}: letters, digits, '.', '_' and '-' only", field=what)
    return value


def check_upstream_name(value: str) -> str:
    """An upstream's display name (the seeds' "Amazon SES — us-east-1"): one line, 1-200 characters."""
    if not _UPSTREAM_NAME.match(value or ""):
        raise Invalid(f"invalid name {value!r}: 1-200 characters on one line", field="name")
    return value


def check_domain(value: str) -> str:
    value = (value or "").strip().lower().rstrip(".")
    if not _DOMAIN.match(value):
        raise Invalid(f"invalid domain {value!r}", field="domain")
    return value


def check_email(value: str, field: str = "email") -> str:
    value = (value or "").strip().lower()
    if not _EMAIL.match(value):
        raise Invalid(f"invalid email address {value!r}", field=field)
    return value


class Admin:
    def apply(self, settings: Settings) -> None:
        """A reload: public_url, the DNS resolver, default verify_certificates for new upstreams."""
        self.settings = settings

    def __init__(self, settings: Settings, store: Store, master_key: MasterKey) -> None:
        self.settings = settings
        self.store = store
        self.directory = store.directory
        self.master_key = master_key

    # -- accounts and keys ----------------------------------------------------------------
    def create_account(self, name: str):
        return self.directory.create_account(check_name(name, "account"))

    def remove_account(self, name: str) -> None:
        """The account and everything it owns (keys, domains, aliases, suppressions...)."""
        self.directory.remove_account(name)

    def create_key(self, account: str, scopes: list[str], name: str | None = None) -> tuple[str, KeyRec]:
        """A new API key: the full key is returned here, once, and stored only as a hash."""
        scopes = [s.strip() for s in scopes if s.strip()]
        bad = [s for s in scopes if s not in SCOPES]
        if not scopes or bad:
            raise Invalid(f"invalid scopes {bad or scopes!r}; choose from {', '.join(SCOPES)}", field="scopes")
        full, key_id, key_hash = generate_api_key()
        return full, self.directory.create_api_key(account, key_id, key_hash, scopes, name)

    def revoke_key(self, key_id: str, *, account_id: str | None = None) -> None:
        """Revoke a key; with ``account_id`` (an account's own key acting) only a key of that account."""
        if account_id is not None:
            rec = self.directory.find_api_key(key_id)
            if rec is None or rec.account_id != account_id:
                raise NotFound(f"no API key {key_id!r}")
        self.directory.revoke_api_key(key_id)

    # -- domains ----------------------------------------------------------------------------
    def add_domain(self, domain: str, account: str) -> tuple[DomainRec, list[DnsRecord]]:
        """Register a domain with a fresh RSA-2048 and Ed25519 DKIM key; return the DNS records."""
        domain = check_domain(domain)
        stamp = utcnow().strftime("%Y%m")
        keys = []
        for algorithm, prefix in (("rsa", "rsa"), ("ed25519", "ed")):
            pem, txt = dkim.generate_key(algorithm)
            keys.append((f"relay-{prefix}-{stamp}", algorithm, self.master_key.encrypt_str(pem.decode(),
                                                                                          aad=domain), txt))
        rec = self.directory.add_domain(account, domain, pysecrets.token_urlsafe(24), keys)
        return rec, self.dns_records(rec)

    def dns_records(self, rec: DomainRec) -> list[DnsRecord]:
        out = [DnsRecord("TXT", f"{k.selector}._domainkey.{rec.name}", k.public_txt,
                         f"DKIM ({k.algorithm})" + ("" if k.status == "active" else f", {k.status}"))
               for k in rec.keys if k.active or k.status in ("pending", "retiring")]
        out.append(DnsRecord("TXT", f"{VERIFY_PREFIX}.{rec.name}", f"relay-verification={rec.verification_token}",
                             "domain verification"))
        out.append(DnsRecord("TXT", rec.name, "v=spf1 include:<your upstream provider's SPF domain> ~all",
                             "SPF hint: authorize the upstream relays of your IP pools"))
        return out

    def claim(self, domain: str, account: str | None = None) -> DomainRec:
        """One claim on ``domain``: ``account``'s; without one, the verified claim, else the only claim
        (several unverified claims: Invalid, name the account)."""
        return self.directory.get_domain(check_domain(domain), account)

    def verify_domain(self, domain: str, *, trust: bool = False, account: str | None = None) -> DomainRec:
        """Check the verification TXT in DNS (``trust``: the sysadmin vouches for it)."""
        return self.verify_claim(self.claim(domain, account), trust=trust)

    def verify_claim(self, rec: DomainRec, *, trust: bool = False) -> DomainRec:
        """The first claim verified owns the domain: a claim on a domain another account verified
        already is Conflict (checked before DNS, and again atomically when marking it)."""
        rec = self.directory.get_domain_by_id(rec.id)
        if rec.verified:
            return rec
        owner = self.directory.find_domain(rec.name)
        if owner is not None and owner.id != rec.id:
            raise Conflict(DOMAIN_TAKEN)
        if not trust:
            expected = f"relay-verification={rec.verification_token}"
            found = self._txt(f"{VERIFY_PREFIX}.{rec.name}")
            if expected not in found:
                raise Invalid(f"TXT {VERIFY_PREFIX}.{rec.name} does not hold {expected!r} (found {found!r})",
                              field="domain")
        return self.directory.mark_domain_verified(rec.id)

    def verify_domain_and_keys(self, domain: str, *, trust: bool = False, account: str | None = None) -> DomainRec:
        """What "verify" means at every front door: :meth:`verify_domain`, then a pending DKIM
        rotation is checked too (:meth:`check_dkim_rotation`)."""
        return self.verify_claim_and_keys(self.claim(domain, account), trust=trust)

    def verify_claim_and_keys(self, rec: DomainRec, *, trust: bool = False) -> DomainRec:
        return self.check_claim_rotation(self.verify_claim(rec, trust=trust))

    def remove_domain(self, domain: str, account: str | None = None) -> None:
        """The claim and its DKIM keys; Conflict while aliases of the domain exist."""
        self.remove_claim(self.claim(domain.strip().lower(), account))

    def remove_claim(self, rec: DomainRec) -> None:
        self.directory.remove_domain(rec.id)

    def _txt(self, name: str) -> list[str]:
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=not self.settings.dns.nameservers)
        if self.settings.dns.nameservers:
            resolver.nameservers = list(self.settings.dns.nameservers)
        resolver.port = self.settings.dns.port
        resolver.lifetime = self.settings.dns.timeout
        try:
            answer = resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []  # the name or the record is not there: an answer, not a failure
        except dns.exception.Timeout:
            raise Unavailable(f"the DNS lookup of {name} TXT timed out ({self._resolvers()}): nothing was "
                              "decided, try again") from None
        except (dns.exception.DNSException, OSError) as exc:  # SERVFAIL, no nameserver answered, network
            raise Unavailable(f"the DNS lookup of {name} TXT failed ({type(exc).__name__}, {self._resolvers()}): "
                              "nothing was decided, try again") from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def _resolvers(self) -> str:
        d = self.settings.dns
        return f"resolver {', '.join(d.nameservers)} port {d.port}" if d.nameservers else "the system resolver"

    # -- upstreams ----------------------------------------------------------------------------
    def add_upstream(self, *, name: str, ip_pool: str, host: str, port: int, encryption: str,
                     username: str | None = None, password: str | None = None, verify_tls: bool | None = None,
                     priority: int = 0, weight: int = 1, max_connections: int | None = None,
                     is_active: bool = True, account: str | None = None) -> UpstreamRec:
        """An upstream of ``account`` (in one of its own IP pools), or without it the operator's."""
        check_upstream_name(name)
        check_name(ip_pool, "ip_pool")
        if encryption not in ENCRYPTIONS:
            raise Invalid(f"invalid encryption {encryption!r}; choose tls, ssl or none", field="encryption")
        if not 0 < port < 65536:
            raise Invalid(f"invalid port {port!r}", field="port")
        if not host or any(c.isspace() for c in host):
            raise Invalid(f"invalid host {host!r}", field="host")
        if weight < 1 or (max_connections is not None and max_connections < 1):
            raise Invalid("weight and max_connections must be at least 1", field="weight")
        owner = self.directory.get_account(account).id if account is not None else None
        enc = self.master_key.encrypt_str(password, aad=name) if password else None
        return self.directory.add_upstream(
            name=name, ip_pool=ip_pool, host=host, port=port, encryption=encryption, username=username,
            password_enc=enc, verify_tls=self.settings.delivery.verify_certificates if verify_tls is None else verify_tls,
            priority=priority, weight=weight, max_connections=max_connections, is_active=is_active, owner=owner)

    # -- IP pools: who may use them ---------------------------------------------------------------
    def pools(self) -> list[PoolRec]:
        return self.store.ip_pools.list()

    def restrict_pool(self, name: str, restricted: bool = True) -> PoolRec:
        return self.store.ip_pools.restrict(check_name(name, "ip_pool"), restricted)

    def grant_pool(self, name: str, account: str) -> PoolRec:
        return self.store.ip_pools.grant(check_name(name, "ip_pool"), self.directory.get_account(account).id)

    def revoke_pool(self, name: str, account: str) -> PoolRec:
        return self.store.ip_pools.revoke(check_name(name, "ip_pool"), self.directory.get_account(account).id)

    def remove_upstream(self, name_or_id: str) -> None:
        self.directory.remove_upstream(name_or_id)

    def upstream_password(self, rec: UpstreamRec) -> str | None:
        return self.master_key.decrypt_str(rec.password_enc, aad=rec.name) if rec.password_enc else None

    # -- aliases --------------------------------------------------------------------------------
    def add_alias(self, email: str, *, account: str, ip_pool: str = DEFAULT_IP_POOL, name: str | None = None,
                  is_default: bool = False) -> tuple[AliasRec, str]:
        """Create an unverified alias and queue its verification email. Returns (alias, queue id)."""
        email = check_email(email)
        check_name(ip_pool, "ip_pool")
        if name is not None and ("\r" in name or "\n" in name):
            raise Invalid("name must not contain line breaks", field="name")
        domain = email.rpartition("@")[2]
        acc = self.directory.get_account(account)
        dom = self.directory.find_domain(domain)
        if dom is None or dom.account_id != acc.id or not dom.verified:
            raise Invalid(f"{domain!r} is not a verified domain of account {account!r}", field="email")
        token = pysecrets.token_urlsafe(32)
        alias = self.directory.add_alias(account=account, email=email, name=name, ip_pool=ip_pool,
                                         is_default=is_default, token=token)
        return alias, self.queue_verification(alias, token)

    def system_route_gap(self, pool: str) -> str | None:
        """Why system mail for ``pool`` (``[system] ip_pool`` wins) cannot go out now, or None."""
        route = self.settings.system.ip_pool or pool
        if any(u.is_active for u in self.directory.list_upstreams(route)):
            return None
        return (f"IP pool {route!r} has no active upstream: the verification email waits in the queue until one "
                f"is added (relay upstream add NAME --ip-pool {route} ...) or [system] ip_pool names a pool "
                "that has one")

    def verification_link(self, token: str) -> str:
        return f"{self.settings.public_url}/api/v1/aliases/verify/{token}"

    def queue_verification(self, alias: AliasRec, token: str) -> str:
        queue_id = new_queue_id()
        hostname = self.settings.hostname
        sender = f"postmaster@{hostname}"
        raw = message.alias_verification_message(sender=sender, alias=alias.email, hostname=hostname,
                                                 link=self.verification_link(token), queue_id=queue_id)
        now = utcnow()
        self.store.queue.enqueue([NewMessage(
            id=queue_id, ip_pool=self.settings.system.ip_pool or alias.ip_pool, mail_from=sender, body=raw,
            recipients=[alias.email],
            created_at=now, expires_at=now + dt.timedelta(seconds=self.settings.delivery.max_age),
            account_id=alias.account_id, source="system", subject="Verify your sending address")])
        return queue_id

    def verify_alias(self, email: str | None = None, token: str | None = None,
                     now: dt.datetime | None = None) -> AliasRec:
        """By address (the operator's override, no expiry) or by the emailed token, which works once and
        only within ``aliases.verify_link_ttl`` of being sent (else Expired, and nothing changes)."""
        if not email and not token:
            raise NotFound("no such alias or verification link")
        if email:
            return self.directory.verify_alias(email=email)
        return self.directory.verify_alias(token=token, issued_after=self._links_issued_after(now))

    def verification_link_alias(self, token: str, now: dt.datetime | None = None) -> AliasRec:
        """The alias a verification link is for, changing nothing (what the link's page shows):
        NotFound for an unknown or used token, Expired past ``aliases.verify_link_ttl``."""
        found = self.directory.alias_by_token(token)
        if found is None:
            raise NotFound("no such alias or verification link")
        alias, sent_at = found
        if link_expired(sent_at, self._links_issued_after(now)):
            raise Expired("this verification link has expired")
        return alias

    def _links_issued_after(self, now: dt.datetime | None) -> dt.datetime:
        return (now or utcnow()) - dt.timedelta(seconds=self.settings.aliases.verify_link_ttl)

    def resend_verification(self, email_or_id: str) -> tuple[AliasRec, str]:
        """A new link (issued now; the old one stops working) for an unverified alias. Returns (alias, queue id)."""
        alias = self.directory.get_alias(email_or_id)
        token = pysecrets.token_urlsafe(32)
        alias = self.directory.renew_alias_token(alias.id, token)
        return alias, self.queue_verification(alias, token)

    # -- for the HTTP API ---------------------------------------------------------------------
    def create_key_for(self, account: str, scopes: list[str], granted_by: frozenset[str],
                       name: str | None = None) -> tuple[str, KeyRec]:
        """:meth:`create_key` for a key made with another key: it cannot grant a scope it lacks."""
        if name is not None and not _LINE.match(name):
            raise Invalid("name must be at most 200 characters on one line", field="name")
        wanted = {s.strip() for s in scopes if s.strip()}
        if wanted & CLI_ONLY_SCOPES:
            raise Forbidden("the operator scope is given only from the CLI (relay key create --scopes operator)")
        missing = sorted(wanted - granted_by)
        if missing:
            raise Forbidden(f"this key cannot grant scopes it does not have: {', '.join(missing)}")
        return self.create_key(account, scopes, name)

    def update_alias(self, alias: AliasRec, **changes: object) -> AliasRec:
        """Only ``name``, ``is_default`` and ``ip_pool`` change after creation."""
        bad = sorted(set(changes) - {"name", "is_default", "ip_pool"})
        if bad:
            raise Invalid("only name, is_default and ip_pool can be changed after creation", field=bad[0])
        name = changes.get("name")
        if name is not None and not _LINE.match(str(name)):
            raise Invalid("name must be at most 200 characters on one line", field="name")
        if changes.get("ip_pool") is not None:
            check_name(str(changes["ip_pool"]), "ip_pool")
        if "ip_pool" in changes and changes["ip_pool"] is None:
            raise Invalid("ip_pool cannot be empty", field="ip_pool")
        if "is_default" in changes and changes["is_default"] is None:
            changes["is_default"] = False
        return self.directory.update_alias(alias.id, **changes)

    def remove_alias_checked(self, alias: AliasRec) -> None:
        """Refuse to remove the account's only verified alias (403) or one queued mail still uses (409)."""
        if alias.verified and not any(a.verified and a.id != alias.id
                                      for a in self.directory.list_aliases(self._account_name(alias.account_id))):
            raise Forbidden("Cannot delete the only remaining verified alias")
        pending = self.directory.alias_pending_mail(alias.id)
        if pending:
            raise Conflict(f"Alias is used by {pending} queued recipient(s): wait for their delivery or "
                           "remove them from the queue first")
        self.directory.remove_alias(alias.id)

    def remove_alias(self, email_or_id: str) -> None:
        """:meth:`remove_alias_checked` for an alias named by its address (or id)."""
        self.remove_alias_checked(self.directory.get_alias(email_or_id))

    def _account_name(self, account_id: str) -> str:
        return self.directory.get_account_by_id(account_id).name

    def update_upstream(self, rec: UpstreamRec, *, password: str | None = None, **changes: object) -> UpstreamRec:
        """Validate as :meth:`add_upstream` does; the password is re-encrypted when the name changes."""
        merged = {f: getattr(rec, f) for f in ("name", "ip_pool", "host", "port", "encryption", "priority",
                                              "weight", "max_connections")}
        merged.update({k: v for k, v in changes.items() if k in merged})
        check_upstream_name(str(merged["name"]))
        check_name(str(merged["ip_pool"]), "ip_pool")
        if merged["encryption"] not in ENCRYPTIONS:
            raise Invalid(f"invalid encryption {merged['encryption']!r}; choose tls, ssl or none", field="encryption")
        if not 0 < int(merged["port"]) < 65536:  # type: ignore[call-overload]
            raise Invalid(f"invalid port {merged['port']!r}", field="port")
        host = str(merged["host"])
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise Invalid(f"invalid host {host!r}", field="host")
        if int(merged["weight"]) < 1:  # type: ignore[call-overload]
            raise Invalid("weight must be at least 1", field="weight")
        values = dict(changes)
        if password is not None or ("name" in changes and changes["name"] != rec.name):
            secret = password if password is not None else self.upstream_password(rec)
            values["password_enc"] = self.master_key.encrypt_str(secret, aad=str(merged["name"])) if secret else None
        return self.directory.update_upstream(rec.id, **values)

    def rotate_dkim(self, domain: str, account: str | None = None) -> DomainRec:
        """:meth:`rotate_claim` of the claim :meth:`claim` finds."""
        return self.rotate_claim(self.claim(domain, account))

    def rotate_claim(self, rec: DomainRec) -> DomainRec:
        """New RSA-2048 and Ed25519 keys under new selectors, published but not signing: they take over
        when :meth:`check_dkim_rotation` sees their DNS records. A rotation already pending is returned as is."""
        rec = self.directory.get_domain_by_id(rec.id)
        if any(k.status == "pending" for k in rec.keys):
            return rec
        stamp = utcnow().strftime("%Y%m%d") + pysecrets.token_hex(2)
        keys = []
        for algorithm, prefix in (("rsa", "rsa"), ("ed25519", "ed")):
            pem, txt = dkim.generate_key(algorithm)
            enc = self.master_key.encrypt_str(pem.decode(), aad=rec.name)
            keys.append((f"relay-{prefix}-{stamp}", algorithm, enc, txt))
        return self.directory.add_dkim_keys(rec.id, keys, status="pending")

    def check_dkim_rotation(self, domain: str, now: dt.datetime | None = None, *,
                            account: str | None = None) -> DomainRec:
        """:meth:`check_claim_rotation` of the claim :meth:`claim` finds."""
        return self.check_claim_rotation(self.claim(domain, account), now)

    def check_claim_rotation(self, rec: DomainRec, now: dt.datetime | None = None) -> DomainRec:
        """Switch signing to the pending keys once every one of their TXT records is in DNS (the keys
        that signed until then stay published for :attr:`dkim_grace`); drop keys whose grace is over."""
        now = now or utcnow()
        self.directory.drop_retired_dkim(now)
        rec = self.directory.get_domain_by_id(rec.id)
        pending = [k for k in rec.keys if k.status == "pending"]
        if pending and all(_dkim_published(k.public_txt, self._txt(f"{k.selector}._domainkey.{rec.name}"))
                           for k in pending):
            rec = self.directory.activate_dkim(rec.id, [k.selector for k in pending], now + self.dkim_grace)
        return rec

    dkim_grace = dt.timedelta(days=7)


_LINE = re.compile(r"^[^\r\n\x00]{1,200}$")


def link_expired(sent_at: dt.datetime | None, issued_after: dt.datetime) -> bool:
    """A verification link sent before ``issued_after`` (or at an unknown time) no longer works."""
    return sent_at is None or sent_at < issued_after


def _dkim_p(txt: str) -> str:
    tags = dict(part.strip().split("=", 1) for part in txt.split(";") if "=" in part)
    return "".join(tags.get("p", "").split())


def _dkim_published(expected: str, found: list[str]) -> bool:
    want = _dkim_p(expected)
    return bool(want) and any(_dkim_p(f) == want for f in found)


__all__ = ["CLI_ONLY_SCOPES", "SCOPES", "Admin", "Conflict", "DnsRecord", "Expired", "Forbidden", "Invalid",
           "NotFound"]
