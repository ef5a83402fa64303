"""Logging set-up: human-readable lines by default, JSON lines when configured.

Structured fields travel in ``extra={...}``; both formats print them (queue id, account, alias,
pool, upstream, reply...). Secrets never reach a log call in the first place.
"""

from __future__ import annotations

import json
import logging
import sys

_STD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _STD}


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (logfmt-style fields; unknown ones left out)."""

    def format(self, record: logging.LogRecord) -> str:
        base = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname:7} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items() if v is not None)
        out = f"{base} {extra}" if extra else base
        if record.exc_info:
            out += "\n" + self.formatException(record.exc_info)
        return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every structured field."""

    def format(self, record: logging.LogRecord) -> str:
        data = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                "logger": record.name, "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.relay_format = fmt  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's per-command chatter
    logging.getLogger("alembic").setLevel(logging.WARNING)


def apply_log_settings(level: str, fmt: str) -> None:
    """Reload (SIGHUP): new level, and the format of the handler :func:`setup_logging` installed."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "relay_format", None) not in (None, fmt):
            handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
            handler.relay_format = fmt  # type: ignore[attr-defined]


MESSAGE_FIELDS = ("queue_id", "account", "alias", "pool", "upstream", "reply")


def message_fields(queue_id: str, *, account: str | None = None, alias: str | None = None,
                   pool: str | None = None, upstream: str | None = None, reply: str | None = None,
                   **more: object) -> dict[str, object]:
    """The ``extra`` of a line about a message: always the same six keys (None when not known yet)."""
    return {"queue_id": queue_id, "account": account, "alias": alias, "pool": pool, "upstream": upstream,
            "reply": reply, **more}
