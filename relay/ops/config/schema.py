"""The settings schema: one frozen pydantic model per ``[section]``, and :class:`Settings` over them.

Pure: no file or environment access here (``hostname`` defaults to :func:`socket.getfqdn`). Every
key has a default, so ``Settings()`` is a valid configuration. Build it with
:func:`relay.ops.config.load_settings`, which layers the file and the ``RELAY_*`` environment on top.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from relay.ops.config.values import (
    WILDCARD_HOSTS,
    Duration,
    Float,
    Int,
    Listener,
    Network,
    OptionalPath,
    format_hostport,
    mask_url,
    parse_hostport,
    required_path,
)

__all__ = [
    "AliasesSettings",
    "ApiSettings",
    "DatabaseSettings",
    "DeliverySettings",
    "DnsSettings",
    "LogSettings",
    "PoliciesSettings",
    "SecretsSettings",
    "Settings",
    "SmtpSettings",
    "TlsSettings",
    "Trusted",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- sections


class Trusted(_Model):
    """A network whose clients may send without AUTH, as ``account`` (relay listener, or no-AUTH)."""

    network: Network
    account: str = Field(min_length=1)

    def contains(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True if *address* (an IP literal) lies inside this network."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.version == self.network.version and ip in self.network


class SmtpSettings(_Model):
    """``[smtp]``: listeners and session limits."""

    submission: Listener = "127.0.0.1:2587"
    smtps: Listener = "127.0.0.1:2465"
    relay: Listener = None
    trusted: list[Trusted] = Field(default_factory=list)
    max_message_size: Int = Field(default=26_214_400, gt=0)
    # bytes all DATA transfers in flight may hold together: each reserves max_message_size
    data_memory_budget: Int = Field(default=268_435_456, gt=0)
    max_recipients: Int = Field(default=100, gt=0)
    max_connections: Int = Field(default=1000, gt=0)
    max_connections_per_ip: Int = Field(default=50, gt=0)
    command_timeout: Float = Field(default=300.0, gt=0)
    data_timeout: Float = Field(default=600.0, gt=0)
    max_errors: Int = Field(default=20, gt=0)
    auth_max_failures: Int = Field(default=5, gt=0)
    auth_lockout: Float = Field(default=900.0, ge=0)
    workers: Int = Field(default=1, ge=1)
    shutdown_timeout: Float = Field(default=30.0, ge=0)
    hide_client_address: bool = False  # the Received: field names no client name or address

    @model_validator(mode="after")
    def _budget_holds_a_message(self) -> SmtpSettings:
        if self.data_memory_budget < self.max_message_size:
            raise ValueError(f"smtp.data_memory_budget ({self.data_memory_budget}) must be >= smtp.max_message_size "
                             f"({self.max_message_size}): every DATA reserves max_message_size")
        return self

    def listeners(self) -> dict[str, tuple[str, int]]:
        """The enabled listeners as ``{"submission"|"smtps"|"relay": (host, port)}``."""
        out: dict[str, tuple[str, int]] = {}
        for name in ("submission", "smtps", "relay"):
            value = getattr(self, name)
            if value is not None:
                out[name] = parse_hostport(value)
        return out

    def trusted_account(self, address: str) -> str | None:
        """The account of the first trusted network containing *address*, else None."""
        for entry in self.trusted:
            if entry.contains(address):
                return entry.account
        return None


class ApiSettings(_Model):
    """``[api]``: the HTTP API listener."""

    listen: Listener = "127.0.0.1:8025"
    public_url: str | None = None
    # peers whose X-Forwarded-For / X-Forwarded-Proto are believed (a reverse proxy); none by default
    trusted_proxies: list[Network] = Field(default_factory=list)
    # simultaneous connections; a request over it is answered 503 (uvicorn's limit_concurrency)
    max_connections: Int = Field(default=100, gt=1)
    # seconds a client has to send a request line and headers (slow loris), from the connection or the first byte
    header_timeout: Float = Field(default=20.0, gt=0)
    # bytes the request bodies being read and handled may hold together: each reserves its length
    body_memory_budget: Int = Field(default=134_217_728, gt=0)
    # how long a dashboard login lasts (the sb-access-token cookie and its session in the store)
    session_ttl: Duration = Field(default=12 * 3600.0, gt=0)
    # how long a one-time set-password link (relay user add / reset-password) works
    password_link_ttl: Duration = Field(default=7 * 86400.0, gt=0)

    @field_validator("public_url", mode="before")
    @classmethod
    def _check_public_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            parts = urlsplit(value.strip())
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("expected an http:// or https:// URL")
            return value.strip().rstrip("/")
        return value


class DatabaseSettings(_Model):
    """``[database]``: ``url`` None means ``sqlite:///<data_dir>/relay.db`` (see Settings.database_url)."""

    url: str | None = Field(default=None, repr=False)

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            scheme = value.strip().split(":", 1)[0].lower()
            if "://" not in value or not scheme.startswith(("sqlite", "postgresql")):
                raise ValueError("expected a sqlite:///path or postgresql://user@host/db URL")
            return value.strip()
        return value

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        yield "url", None if self.url is None else mask_url(self.url)


class TlsSettings(_Model):
    """``[tls]``: certificate and key; both None means a self-signed pair in ``data_dir/tls``."""

    cert: OptionalPath = None
    key: OptionalPath = None

    @model_validator(mode="after")
    def _together(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be set together (or both left out)")
        return self


class SecretsSettings(_Model):
    """``[secrets]``: where the master key lives (env ``RELAY_MASTER_KEY`` wins if set)."""

    master_key_file: OptionalPath = None


class DeliverySettings(_Model):
    """``[delivery]``: the outbound queue and upstream defaults."""

    retry_base: Float = Field(default=60.0, gt=0)
    retry_max: Float = Field(default=3600.0, gt=0)
    max_age: Float = Field(default=432_000.0, gt=0)
    connect_timeout: Float = Field(default=30.0, gt=0)
    command_timeout: Float = Field(default=60.0, gt=0)
    # a claim is held this long and renewed (a heartbeat, every third of it) while its node works:
    # a dead node's mail moves to another within about one lease
    lease_seconds: Float = Field(default=30.0, gt=0)
    lease: Float | None = Field(default=None, gt=0)  # the former name of lease_seconds (it wins when only it is set)
    poll_interval: Float = Field(default=5.0, gt=0)
    max_connections: Int = Field(default=10, gt=0)
    concurrency: Int = Field(default=100, gt=0)
    verify_certificates: bool = True
    idle_timeout: Float = Field(default=60.0, gt=0)
    breaker_threshold: Int = Field(default=3, gt=0)
    breaker_cooldown: Float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> DeliverySettings:
        if self.lease is not None and "lease_seconds" not in self.model_fields_set:
            object.__setattr__(self, "lease_seconds", self.lease)
        if self.retry_max < self.retry_base:
            raise ValueError(
                f"delivery.retry_max ({self.retry_max:g}) must be >= delivery.retry_base ({self.retry_base:g})"
            )
        return self


class DnsSettings(_Model):
    """``[dns]``: resolver used for domain verification; no nameservers = the system resolver."""

    nameservers: list[str] = Field(default_factory=list)
    port: Int = Field(default=53, ge=1, le=65535)
    timeout: Float = Field(default=5.0, gt=0)  # seconds for one lookup; past it: "timed out", not "missing"

    @field_validator("nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"expected IP addresses, got {item!r}") from None
        return value


class StoreSettings(_Model):
    """``[store]``: how long the store keeps what it keeps."""

    # seconds a delivery event (accepted, deferred, delivered...) is kept; 0 keeps them forever
    events_retention: Float = Field(default=30 * 86400.0, ge=0)


class SystemSettings(_Model):
    """``[system]``: the gateway's own mail (alias verification emails, DSN bounces)."""

    # the IP pool all system mail goes through; unset: a verification email goes through the alias's
    # own IP pool, a DSN through the IP pool of the message it reports on
    ip_pool: str | None = None


class ScopesSettings(_Model):
    """``[scopes]``: the IP pools a ``send:transactional`` / ``send:marketing`` key may send through."""

    transactional: list[str] = Field(default_factory=lambda: ["transactional", "default"])
    marketing: list[str] = Field(default_factory=lambda: ["marketing", "default"])

    def pools(self) -> dict[str, frozenset[str]]:
        return {"send:transactional": frozenset(self.transactional), "send:marketing": frozenset(self.marketing)}


class SecuritySettings(_Model):
    """``[security]``: what the operator allows beyond the defaults."""

    # ranges an account's outbound targets (webhook URLs, its upstreams' hosts) may resolve to besides public addresses
    allow_targets: list[Network] = Field(default_factory=list)


class WebhooksSettings(_Model):
    """``[webhooks]``: limits of the accounts' webhooks."""

    max_per_account: Int = Field(default=10, ge=0)


class AliasesSettings(_Model):
    """``[aliases]``: sending aliases' verification links."""

    # seconds a verification link works after it is sent (default 7 days); then it is refused (410)
    verify_link_ttl: Float = Field(default=604_800.0, gt=0)


class LogSettings(_Model):
    """``[log]``: level DEBUG/INFO/WARNING/ERROR (any case), format text/json."""

    level: str = "INFO"
    format: str = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _check_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            level = value.strip().upper()
            level = "WARNING" if level == "WARN" else level
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR")
            return level
        return value

    @field_validator("format", mode="before")
    @classmethod
    def _check_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            fmt = value.strip().lower()
            if fmt not in ("text", "json"):
                raise ValueError("expected 'text' or 'json'")
            return fmt
        return value


DEFAULT_POLICIES = ("limits", "suppression", "quota")


class PoliciesSettings(_Model):
    """``[policies]``: ``enabled`` policies in order; ``options`` = each ``[policies.<name>]`` table.

    In the file, a policy's settings are written as a sub-table (``[policies.quota]``); the loader
    moves every key other than ``enabled`` into ``options``. The policy validates its own table.
    """

    # on by default: the seeds' per-message limits, the suppression list, quotas (an empty quota table
    # limits nothing); ``enabled = []`` turns them all off
    enabled: list[str] = Field(default_factory=lambda: list(DEFAULT_POLICIES))
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("enabled")
    @classmethod
    def _check_enabled(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if not name.strip():
                raise ValueError("expected non-empty policy names")
            if name in seen:
                raise ValueError(f"expected each policy once, {name!r} is listed twice")
            seen.add(name)
        return value

    def settings_for(self, name: str) -> dict[str, Any]:
        """The ``[policies.<name>]`` table (empty dict when absent)."""
        return dict(self.options.get(name, {}))


class Settings(_Model):
    """Everything Relay reads from its configuration. Frozen; build it with :func:`load_settings`."""

    data_dir: Path = Field(default=Path("relay-data"), validate_default=True)
    hostname: str = Field(default_factory=socket.getfqdn)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    aliases: AliasesSettings = Field(default_factory=AliasesSettings)
    policies: PoliciesSettings = Field(default_factory=PoliciesSettings)
    system: SystemSettings = Field(default_factory=SystemSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    scopes: ScopesSettings = Field(default_factory=ScopesSettings)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _check_data_dir(cls, value: Any) -> Any:
        return required_path(value)

    @field_validator("hostname", mode="before")
    @classmethod
    def _check_hostname(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip().rstrip(".")
            if not name or len(name) > 253 or any(c.isspace() for c in name):
                raise ValueError("expected a host name such as mail.example.com")
            return name
        return value

    @model_validator(mode="after")
    def _body_budget_holds_a_request(self) -> Settings:
        cap = self.smtp.max_message_size * 4 // 3 + (1 << 20)  # relay.api.limits.body_cap: the largest body
        if self.api.body_memory_budget < cap:
            raise ValueError(f"api.body_memory_budget ({self.api.body_memory_budget}) must be >= the largest request "
                             f"body, smtp.max_message_size x 4/3 + 1 MiB ({cap})")
        return self

    # -- effective values derived from data_dir / other keys

    @property
    def source_path(self) -> Path | None:
        """The TOML file these settings were read from (None: defaults/env only)."""
        return self._source

    @property
    def database_url(self) -> str:
        """``database.url`` or ``sqlite:///<data_dir>/relay.db``. May hold a password: never log it."""
        return self.database.url or f"sqlite:///{self.data_dir / 'relay.db'}"

    @property
    def master_key_path(self) -> Path:
        """``secrets.master_key_file`` or ``<data_dir>/master.key``."""
        return self.secrets.master_key_file or self.data_dir / "master.key"

    @property
    def tls_dir(self) -> Path:
        """Where the self-signed certificate is generated when ``tls.cert``/``tls.key`` are unset."""
        return self.data_dir / "tls"

    @property
    def public_url(self) -> str:
        """Base URL for links sent by mail, without a trailing slash.

        ``api.public_url``, else ``http://<api.listen>`` (a wildcard listen address is replaced by
        ``hostname``), else ``http://<hostname>`` when the API listener is disabled.
        """
        if self.api.public_url:
            return self.api.public_url
        if self.api.listen is None:
            return f"http://{self.hostname}"
        host, port = parse_hostport(self.api.listen)
        if host in WILDCARD_HOSTS:
            host = self.hostname
        return f"http://{format_hostport(host, port)}"

    def safe_dump(self) -> dict[str, Any]:
        """A JSON-able dict of all settings with secrets masked (for ``relay config show``)."""
        data = self.model_dump(mode="json")
        if self.database.url is not None:
            data["database"]["url"] = mask_url(self.database.url)
        return data

