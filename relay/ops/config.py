"""Relay's configuration: one TOML file, read once at start, into one typed, frozen settings object.

Sources, weakest first:

1. built-in defaults (every key has one, so no file at all is a valid configuration);
2. the TOML file: ``load_settings(path)``, else the path in env ``RELAY_CONFIG``, else none;
3. environment overrides ``RELAY_<SECTION>_<KEY>`` (``RELAY_SMTP_SUBMISSION``,
   ``RELAY_DELIVERY_RETRY_BASE``), and ``RELAY_<KEY>`` for the top-level keys (``RELAY_DATA_DIR``,
   ``RELAY_HOSTNAME``).

The names of the environment variables are built from the models' fields, so keys containing
underscores are matched exactly, never split. An env value is parsed as a TOML value when it is one
(``1``, ``true``, ``["a", "b"]``, ``[{network="10.0.0.0/8", account="acme"}]``), else taken as the raw
string; list-of-string keys also accept ``a,b,c``. ``RELAY_*`` variables that name no key are
ignored (other tools use the prefix; ``RELAY_CONFIG`` and ``RELAY_MASTER_KEY`` are read elsewhere).

Policy settings: under ``[policies]`` the only fixed key is ``enabled``. Every other key must be a
table holding one policy's own settings (``[policies.quota]``); these are collected, unvalidated,
into ``settings.policies.options`` (``dict[policy name, dict]``) for the policy to validate itself.
Keys of such tables that appear in the file can be overridden from env as
``RELAY_POLICIES_<POLICY>_<KEY>`` (``-`` in names becomes ``_``).

Every problem raises :class:`relay.vocab.ConfigError` naming the dotted key, the bad value and
where it came from (the file or the env variable).

Relative paths (``data_dir``, ``tls.cert``, ...) are resolved against the working directory when
loaded. ``RELOADABLE`` lists the keys that a reload (SIGHUP) may change in a running process; a
change to any other key needs a restart (see :func:`restart_required`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import tomllib
import typing
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from relay.vocab import ConfigError

__all__ = [
    "ENV_CONFIG",
    "ENV_MASTER_KEY",
    "ENV_PREFIX",
    "RELOADABLE",
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
    "changed_keys",
    "env_names",
    "load_settings",
    "mask_url",
    "parse_hostport",
    "restart_required",
    "settings_from_dict",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "RELAY_"
ENV_CONFIG = "RELAY_CONFIG"
ENV_MASTER_KEY = "RELAY_MASTER_KEY"

#: Dotted keys a running process may pick up on reload (SIGHUP). Everything else (listeners,
#: worker count, database, data_dir, hostname, master key, pool sizes, policies) needs a restart.
RELOADABLE: frozenset[str] = frozenset(
    {
        "log.level",
        "log.format",
        "tls.cert",
        "tls.key",
        "smtp.trusted",
        "smtp.max_message_size",
        "smtp.max_recipients",
        "smtp.max_connections_per_ip",
        "smtp.command_timeout",
        "smtp.data_timeout",
        "smtp.max_errors",
        "smtp.max_connections",
        "smtp.auth_max_failures",
        "smtp.auth_lockout",
        "smtp.shutdown_timeout",
        "api.public_url",
        "delivery.retry_base",
        "delivery.retry_max",
        "delivery.max_age",
        "delivery.connect_timeout",
        "delivery.command_timeout",
        "delivery.poll_interval",
        "delivery.verify_certificates",
        "dns.nameservers",
        "dns.port",
    }
)

_DISABLED = frozenset({"", "none", "off", "disabled"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


# --------------------------------------------------------------------------- helpers


def parse_hostport(value: str) -> tuple[str, int]:
    """Split ``"host:port"`` into ``(host, port)``; IPv6 hosts are bracketed: ``"[::1]:587"``.

    Port 0 (an ephemeral port, handy in tests) is allowed. Raises :class:`ValueError` with an
    ``expected ...`` message on anything else.
    """
    expected = "expected host:port, e.g. 0.0.0.0:587 or [::1]:587"
    if not isinstance(value, str):
        raise ValueError(expected)
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or text[end + 1 : end + 2] != ":":
            raise ValueError(expected)
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{expected} ('{host}' is not an IPv6 address)") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            # no port at all, or an unbracketed IPv6 address
            raise ValueError(expected)
    if not host or any(c.isspace() for c in host):
        raise ValueError(expected)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{expected} (port must be 0-65535)")
    return host, int(port_text)


def _format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mask_url(url: str) -> str:
    """Return *url* with any password replaced by ``***`` (for logs, reprs and error messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    userinfo = f"{parts.username}:***" if parts.username else ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc}"))


def _abspath(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip():
            return Path(os.path.abspath(os.path.expanduser(text)))
    return value


def _optional_path(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _abspath(value)


def _required_path(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a directory path")
    return _abspath(value)


def _listener(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in _DISABLED:
            return None
        host, port = parse_hostport(value)
        return _format_hostport(host, port)
    return value  # let the str type report the error


def _no_bool_int(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected an integer, not true/false")
    return value


def _no_bool_float(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _network(value: Any) -> IPv4Network | IPv6Network:
    if isinstance(value, (IPv4Network, IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a network such as 10.0.0.0/8 or 2001:db8::/32")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError("expected a network such as 10.0.0.0/8 or 2001:db8::/32") from None


Int = Annotated[int, BeforeValidator(_no_bool_int)]
Float = Annotated[float, BeforeValidator(_no_bool_float)]
Listener = Annotated[str | None, BeforeValidator(_listener)]
OptionalPath = Annotated[Path | None, BeforeValidator(_optional_path)]
Network = Annotated[
    IPv4Network | IPv6Network,
    BeforeValidator(_network),
    PlainSerializer(str, return_type=str, when_used="json"),
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
    max_message_size: Int = Field(26_214_400, gt=0)
    max_recipients: Int = Field(100, gt=0)
    max_connections: Int = Field(1000, gt=0)
    max_connections_per_ip: Int = Field(50, gt=0)
    command_timeout: Float = Field(300.0, gt=0)
    data_timeout: Float = Field(600.0, gt=0)
    max_errors: Int = Field(20, gt=0)
    auth_max_failures: Int = Field(5, gt=0)
    auth_lockout: Float = Field(900.0, ge=0)
    workers: Int = Field(1, ge=1)
    shutdown_timeout: Float = Field(30.0, ge=0)

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

    url: str | None = Field(None, repr=False)

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            scheme = value.strip().split(":", 1)[0].lower()
            if "://" not in value or not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
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
    def _together(self) -> "TlsSettings":
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key must be set together (or both left out)")
        return self


class SecretsSettings(_Model):
    """``[secrets]``: where the master key lives (env ``RELAY_MASTER_KEY`` wins if set)."""

    master_key_file: OptionalPath = None


class DeliverySettings(_Model):
    """``[delivery]``: the outbound queue and upstream defaults."""

    retry_base: Float = Field(60.0, gt=0)
    retry_max: Float = Field(3600.0, gt=0)
    max_age: Float = Field(432_000.0, gt=0)
    connect_timeout: Float = Field(30.0, gt=0)
    command_timeout: Float = Field(60.0, gt=0)
    lease: Float = Field(300.0, gt=0)
    poll_interval: Float = Field(5.0, gt=0)
    max_connections: Int = Field(10, gt=0)
    concurrency: Int = Field(100, gt=0)
    verify_certificates: bool = True
    idle_timeout: Float = Field(60.0, gt=0)
    breaker_threshold: Int = Field(3, gt=0)
    breaker_cooldown: Float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "DeliverySettings":
        if self.retry_max < self.retry_base:
            raise ValueError(
                f"delivery.retry_max ({self.retry_max:g}) must be >= delivery.retry_base ({self.retry_base:g})"
            )
        return self


class DnsSettings(_Model):
    """``[dns]``: resolver used for domain verification; no nameservers = the system resolver."""

    nameservers: list[str] = Field(default_factory=list)
    port: Int = Field(53, ge=1, le=65535)

    @field_validator("nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"expected IP addresses, got {item!r}") from None
        return value


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


class PoliciesSettings(_Model):
    """``[policies]``: ``enabled`` policies in order; ``options`` = each ``[policies.<name>]`` table.

    In the file, a policy's settings are written as a sub-table (``[policies.quota]``); the loader
    moves every key other than ``enabled`` into ``options``. The policy validates its own table.
    """

    enabled: list[str] = Field(default_factory=list)
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
    policies: PoliciesSettings = Field(default_factory=PoliciesSettings)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _check_data_dir(cls, value: Any) -> Any:
        return _required_path(value)

    @field_validator("hostname", mode="before")
    @classmethod
    def _check_hostname(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip().rstrip(".")
            if not name or len(name) > 253 or any(c.isspace() for c in name):
                raise ValueError("expected a host name such as mail.example.com")
            return name
        return value

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
        if host in _WILDCARD_HOSTS:
            host = self.hostname
        return f"http://{_format_hostport(host, port)}"

    def safe_dump(self) -> dict[str, Any]:
        """A JSON-able dict of all settings with secrets masked (for ``relay config show``)."""
        data = self.model_dump(mode="json")
        if self.database.url is not None:
            data["database"]["url"] = mask_url(self.database.url)
        return data


# --------------------------------------------------------------------------- env mapping


def _section_models() -> dict[str, type[BaseModel]]:
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections[name] = annotation
    return sections


_SECTIONS = _section_models()


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _env_kind(annotation: Any) -> str:
    """How an env string is turned into a value: 'str', 'strlist' or 'toml'."""
    annotation = _strip_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return "strlist" if _strip_annotated(item) is str else "toml"
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if origin is not None else [annotation]
    if args and all(_strip_annotated(a) in (str, Path) for a in args):
        return "str"
    return "toml"


def _build_env_map() -> dict[str, tuple[tuple[str, ...], str]]:
    """env name -> (key path, kind), from the models' fields."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}

    def add(name: str, path: tuple[str, ...], kind: str) -> None:
        if name in out or name in (ENV_CONFIG, ENV_MASTER_KEY):
            raise RuntimeError(f"config: ambiguous environment variable {name}")  # programming error
        out[name] = (path, kind)

    for name, field in Settings.model_fields.items():
        if name in _SECTIONS:
            for key, sub in _SECTIONS[name].model_fields.items():
                if name == "policies" and key == "options":
                    continue  # per-policy keys are mapped from the file, see _policy_env_map
                add(f"{ENV_PREFIX}{name.upper()}_{key.upper()}", (name, key), _env_kind(sub.annotation))
        else:
            add(f"{ENV_PREFIX}{name.upper()}", (name,), _env_kind(field.annotation))
    return out


_ENV_MAP = _build_env_map()


def env_names() -> dict[str, str]:
    """``{env variable: dotted key}`` for every settings key (policy sub-tables excluded)."""
    return {name: ".".join(path) for name, (path, _) in _ENV_MAP.items()}


def _env_token(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def _policy_env_map(raw: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
    """env name -> key path for the keys of the ``[policies.<name>]`` tables present in the file."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    policies = raw.get("policies")
    if not isinstance(policies, Mapping):
        return out
    for policy, table in policies.items():
        if policy == "enabled" or not isinstance(table, Mapping):
            continue
        for key in table:
            name = f"{ENV_PREFIX}POLICIES_{_env_token(policy)}_{_env_token(str(key))}"
            if name not in _ENV_MAP:
                out.setdefault(name, (("policies", policy, str(key)), "toml"))
    return out


def _parse_env_value(value: str, kind: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        if kind == "strlist":
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
    if kind == "str" and not isinstance(parsed, str):
        return value
    if kind == "strlist" and isinstance(parsed, str):
        return [item.strip() for item in parsed.split(",") if item.strip()]
    return parsed


# --------------------------------------------------------------------------- errors


def _dotted(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _show(value: Any, key: str) -> str:
    if key == "database.url" and isinstance(value, str):
        value = mask_url(value)
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_EXPECTED = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "path_type": "expected a path",
}


def _expected(error: Mapping[str, Any]) -> str:
    kind, msg, ctx = error["type"], error["msg"], error.get("ctx") or {}
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind == "greater_than":
        return f"expected a value > {ctx.get('gt')}"
    if kind == "greater_than_equal":
        return f"expected a value >= {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"expected a value <= {ctx.get('le')}"
    if kind == "string_too_short":
        return "expected a non-empty string"
    if msg.startswith("Input should be "):
        return "expected " + msg.removeprefix("Input should be ")
    return msg[:1].lower() + msg[1:]


def _source_of(loc: tuple[Any, ...], sources: Mapping[tuple[str, ...], str]) -> str:
    """Where the value at *loc* came from; for a whole-table error, every source inside the table."""
    key = tuple(str(p) for p in loc)
    below = sorted({v for k, v in sources.items() if len(k) > len(key) and k[: len(key)] == key})
    if below:
        return ", ".join(below)
    for n in range(len(key), 0, -1):
        if key[:n] in sources:
            return sources[key[:n]]
    return "defaults"


def _convert(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> ConfigError:
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = _dotted(loc)
        source = _source_of(loc, sources)
        if error["type"] == "extra_forbidden":
            lines.append(f"config: {key}: unknown key (from {source})")
        elif error["type"] == "missing":
            lines.append(f"config: {key}: missing required key (from {source})")
        elif isinstance(error.get("input"), Mapping) and error["type"] == "value_error":
            lines.append(f"config: {key}: {_expected(error)} (from {source})")
        else:
            lines.append(
                f"config: {key}: invalid value {_show(error.get('input'), key)} ({_expected(error)}) (from {source})"
            )
    return ConfigError("\n".join(lines))


# --------------------------------------------------------------------------- loading


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config: {path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"config: {path}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path}: invalid TOML: not UTF-8") from None


def _set(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return False  # the file already has a non-table here; its error is reported instead
        node = child
    node[path[-1]] = value
    return True


def _collect_policy_options(raw: dict[str, Any], sources: Mapping[tuple[str, ...], str]) -> None:
    policies = raw.get("policies")
    if not isinstance(policies, dict):
        return
    options: dict[str, Any] = {}
    for name in [k for k in policies if k != "enabled"]:
        table = policies.pop(name)
        if not isinstance(table, dict):
            source = _source_of(("policies", name), sources)
            raise ConfigError(
                f"config: policies.{name}: invalid value {_show(table, '')} "
                f"(expected a [policies.{name}] table of that policy's settings) (from {source})"
            )
        options[name] = table
    policies["options"] = options


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else list(v) if isinstance(v, list) else v for k, v in data.items()}


def _walk_sources(data: Mapping[str, Any], prefix: tuple[str, ...], label: str, out: dict) -> None:
    for key, value in data.items():
        path = prefix + (str(key),)
        out[path] = label
        if isinstance(value, Mapping) and len(path) < 3:
            _walk_sources(value, path, label, out)


def settings_from_dict(
    data: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    source: str = "file",
) -> Settings:
    """Build :class:`Settings` from an already-parsed TOML document plus env overrides.

    *data* has the file's shape (``[policies.<name>]`` tables included); *env* defaults to no
    overrides here (unlike :func:`load_settings`). *source* labels file values in error messages.
    """
    env = env or {}
    raw = _deep_copy(data)
    sources: dict[tuple[str, ...], str] = {}
    _walk_sources(raw, (), source, sources)

    env_map = dict(_ENV_MAP)
    env_map.update(_policy_env_map(raw))
    known_sections = {f"{ENV_PREFIX}{s.upper()}_" for s in _SECTIONS}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in (ENV_CONFIG, ENV_MASTER_KEY):
            continue
        entry = env_map.get(name)
        if entry is None:
            if any(name.startswith(p) for p in known_sections):
                log.warning("config: ignoring env %s: it names no settings key", name)
            continue
        path, kind = entry
        if _set(raw, path, _parse_env_value(env[name], kind)):
            sources[path] = f"env {name}"

    _collect_policy_options(raw, sources)
    # errors under policies.options.<name> point back at policies.<name>
    sources.update({("policies", "options") + k[1:]: v for k, v in sources.items() if k[:1] == ("policies",)})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise _convert(exc, sources) from None


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the configuration: defaults, then the TOML file, then ``RELAY_*`` env overrides.

    *path* None means env ``RELAY_CONFIG`` if set (and non-empty), else no file. A named file that
    does not exist is an error. *env* defaults to ``os.environ``. Raises :class:`ConfigError`.
    """
    env = os.environ if env is None else env
    if path is None and env.get(ENV_CONFIG, "").strip():
        path = env[ENV_CONFIG].strip()
    file: Path | None = None
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        data = _read_file(file)
    settings = settings_from_dict(data, env, source=f"file {file}" if file else "file")
    settings._source = file
    return settings


# --------------------------------------------------------------------------- reload support


def _flatten(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for key in type(value).model_fields:
                out[f"{name}.{key}"] = getattr(value, key)
        else:
            out[name] = value
    return out


def changed_keys(old: Settings, new: Settings) -> set[str]:
    """Dotted keys whose values differ between two settings objects."""
    a, b = _flatten(old), _flatten(new)
    return {key for key in a if a[key] != b[key]}


def restart_required(old: Settings, new: Settings) -> set[str]:
    """Changed keys that a reload cannot apply (not in :data:`RELOADABLE`)."""
    return changed_keys(old, new) - RELOADABLE
