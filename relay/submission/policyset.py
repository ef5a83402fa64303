"""Run the enabled policies' hooks in order (the contract is in ``policies.spec``).

Policies are found through the ``relay.policies`` entry-point group, enabled in the config file in
order, and given their own settings table. A hook that raises makes the submission tempfail
(``451 4.3.0``): a broken policy never crashes a session and never accepts by accident.
"""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import entry_points
from typing import Any, Mapping, Sequence

from policies.spec import ENTRY_POINT_GROUP, HOOKS, PolicyServices, SuppressionBook, Verdict
from relay.vocab import ConfigError

log = logging.getLogger(__name__)

POLICY_ERROR = Verdict.tempfail(451, "4.3.0", "Temporary local problem, try again later", http_status=503)


def discover() -> dict[str, Any]:
    """name -> entry point; two distributions offering one name is a start-up error."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise ConfigError(f"config: policies: two installed policies are named {ep.name!r} "
                              f"({found[ep.name].value} and {ep.value})")
        found[ep.name] = ep
    return found


def _takes_services(cls: Any) -> bool:
    """Whether a policy's constructor takes ``(options, services)`` or ``(options)`` alone."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # a builtin or C type: assume the documented form
        return True
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2


def load(enabled: Sequence[str], options: Mapping[str, Mapping[str, Any]],
         services: PolicyServices | None) -> "PolicySet":
    """Instantiate the enabled policies, in order, each with its options and the narrow ``services``."""
    if len(set(enabled)) != len(enabled):
        raise ConfigError(f"config: policies.enabled: a policy is listed twice: {list(enabled)!r}")
    available = discover() if enabled else {}
    instances = []
    for name in enabled:
        if name not in available:
            raise ConfigError(f"config: policies.enabled: {name!r} is not installed "
                              f"(installed: {', '.join(sorted(available)) or 'none'})")
        cls = available[name].load()
        opts = dict(options.get(name, {}))
        instances.append((name, cls(opts, services) if _takes_services(cls) else cls(opts)))
    for name in options:
        if name not in enabled:
            raise ConfigError(f"config: policies.{name}: settings for a policy that is not enabled")
    return PolicySet(instances)


class PolicySet:
    def __init__(self, policies: Sequence[tuple[str, Any]] = ()) -> None:
        self.policies = list(policies)
        self._by_hook = {h: [(n, getattr(p, h)) for n, p in self.policies if callable(getattr(p, h, None))]
                         for h in HOOKS}
        #: the accounts' suppression lists, from the first enabled policy that provides them (None: no
        #: suppression list; see policies.spec, "What a policy provides")
        self.suppression_book: SuppressionBook | None = next(
            (book for _, p in self.policies if (book := getattr(p, "suppression_book", None)) is not None), None)

    def has(self, hook: str) -> bool:
        return bool(self._by_hook[hook])

    async def run(self, hook: str, *args: Any) -> Verdict | None:
        """The first refusing verdict wins; accept verdicts let the next policy speak."""
        for name, fn in self._by_hook[hook]:
            try:
                verdict = await fn(*args)
            except Exception:
                log.exception("policy failed", extra={"policy": name, "hook": hook})
                return POLICY_ERROR
            if verdict is not None and verdict.refuses:
                log.info("policy refused", extra={"policy": name, "hook": hook, "code": verdict.code,
                                                  "reason": verdict.reason})
                return verdict
        return None

    async def explain(self, hook: str, *args: Any) -> list[tuple[str, Verdict | None]]:
        """Every policy's own verdict (for ``relay route explain``)."""
        out = []
        for name, fn in self._by_hook[hook]:
            try:
                out.append((name, await fn(*args)))
            except Exception:
                out.append((name, POLICY_ERROR))
        return out

    async def gather(self, hook: str, *args: Any) -> list[tuple[str, Any]]:
        """Every policy's answer to a reporting hook (``usage``), in order; a failure is logged and skipped."""
        out = []
        for name, fn in self._by_hook[hook]:
            try:
                out.append((name, await fn(*args)))
            except Exception:
                log.exception("policy failed", extra={"policy": name, "hook": hook})
        return out

    async def notify(self, hook: str, *args: Any) -> None:
        """after_delivery / after_bounce: counters only; failures are logged, never raised."""
        for name, fn in self._by_hook[hook]:
            try:
                await fn(*args)
            except Exception:
                log.exception("policy failed", extra={"policy": name, "hook": hook})
