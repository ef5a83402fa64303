"""``relay serve``: one asyncio process with the SMTP listeners, the HTTP API and delivery."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import sys
from typing import Any, Callable

import uvicorn

from policies.spec import PolicyServices
from relay import asyncio_compat
from relay.api.deps import from_gateway
from relay.dashboard.app import create_web_app
from relay.delivery import aiosmtplib_compat
from relay.delivery.active import ActiveQueue
from relay.delivery.journal import DotJournal
from relay.delivery.router import Router
from relay.delivery.scheduler import Scheduler
from relay.delivery.upstream import Upstream
from relay.events.bounces import Bouncer
from relay.events.webhooks import WebhookService
from relay.ops import notify, uvicorn_compat
from relay.ops.config import Settings, parse_hostport
from relay.ops.files import private_dir
from relay.ops.tls import ensure_certificate, server_context
from relay.ops.workers import WorkerLink, beat_interval, supervise
from relay.secrets import load_or_create_master_key
from relay.services import housekeeping
from relay.services.admin import Admin
from relay.services.sealed import check_master_key
from relay.services.upstreams import connection, upstream_config
from relay.services.users import Users
from relay.smtp import aiosmtpd_compat, session as smtp
from relay.store import Store, node_id, utcnow
from relay.store.runner import DbRunner
from relay.submission import dkimpy_compat
from relay.submission.pipeline import Pipeline
from relay.submission.policyset import load as load_policies
from relay.throttle import AuthThrottle, ConnectionLimits, MemoryBudget
from relay.vocab import ConfigError

log = logging.getLogger(__name__)


class ListenerBindError(OSError):
    """A listener's address cannot be bound (in use, not ours, no such address): names both."""

    def __init__(self, listener: str, address: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.listener, self.address = listener, address

    def __str__(self) -> str:
        return f"the {self.listener} listener cannot listen on {self.address}: {self.strerror}"


def _bind_one(listener: str, hostport: tuple[str, int], reuse_port: bool) -> socket.socket:
    try:
        return smtp._bind(hostport, reuse_port)
    except OSError as exc:
        host, port = hostport
        raise ListenerBindError(listener, f"[{host}]:{port}" if ":" in host else f"{host}:{port}", exc) from exc


class Gateway:
    """Everything ``relay serve`` runs, wired once from the settings."""

    def __init__(self, settings: Settings, env: dict[str, str] | None = None, *, worker: int = 0,
                 sockets: dict[str, socket.socket] | None = None, api_socket: socket.socket | None = None,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.settings = settings
        self.env = env  # None: os.environ (read again only by a reload, for the same overrides)
        self.worker = worker
        self.stopping = False
        private_dir(settings.data_dir)
        self.master_key = load_or_create_master_key(settings.master_key_path, env)
        cert, key = ensure_certificate(settings.tls.cert, settings.tls.key, settings.data_dir, settings.hostname)
        self.tls_context = server_context(cert, key)
        nid = node_id(settings.data_dir) + (f".w{worker}" if worker else "")
        self.store = Store(settings.database_url, node_id=nid)
        self.store.migrate()
        check_master_key(self.store, self.master_key)
        lock = str(settings.data_dir / "store.lock") if self.store.dialect == "sqlite" and settings.smtp.workers > 1 else None
        self.runner = DbRunner(self.store.dialect, lock)
        self.admin = Admin(settings, self.store, self.master_key)
        d = settings.delivery
        self.policies = load_policies(settings.policies.enabled, settings.policies.options, PolicyServices(
            sessions=self.store.sessions, reads=self.store.reads, runner=self.runner, clock=clock,
            max_message_size=lambda: self.settings.smtp.max_message_size))
        self.webhooks = WebhookService(store=self.store, runner=self.runner, master_key=self.master_key,
                                       allow_targets=settings.security.allow_targets)
        self.active = ActiveQueue()  # fed by the pipeline (fresh mail) and the scheduler (mail due again)
        self.pipeline = Pipeline(
            store=self.store, runner=self.runner, master_key=self.master_key, hostname=settings.hostname,
            lease_seconds=d.lease_seconds, max_age=d.max_age, policies=self.policies,
            trusted=[(t.network, t.account) for t in settings.smtp.trusted],
            max_recipients=settings.smtp.max_recipients, hide_client_address=settings.smtp.hide_client_address,
            scope_pools=settings.scopes.pools(), system_pool=settings.system.ip_pool,
            auth_throttle=AuthThrottle(settings.smtp.auth_max_failures, settings.smtp.auth_lockout),
            connections=ConnectionLimits(settings.smtp.max_connections, settings.smtp.max_connections_per_ip),
            data_budget=MemoryBudget(settings.smtp.data_memory_budget),
            on_queued=self.active.push, on_suppressed=self.webhooks.suppressed)
        self.users = Users(self.runner, self.store, settings, self.pipeline.auth_throttle, clock=clock)
        self.router = Router(threshold=d.breaker_threshold, cooldown=d.breaker_cooldown)
        self.scheduler = Scheduler(
            store=self.store, runner=self.runner, writer=self.pipeline.writer, router=self.router, active=self.active,
            retry_base=d.retry_base, retry_max=d.retry_max, lease=d.lease_seconds, poll_interval=d.poll_interval,
            concurrency=d.concurrency, journal=DotJournal(settings.data_dir / "journal", nid),
            # one machine's SQLite: the journal alone covers every restart; PostgreSQL: other nodes
            # read the store's markers
            markers=self.store.dialect != "sqlite",
            orphans=DotJournal.orphans(settings.data_dir / "journal", node_id(settings.data_dir),
                                       settings.smtp.workers) if worker == 0 else (),
            bounce=Bouncer(hostname=settings.hostname, submit=self.pipeline.submit_system,
                           suppressions=self.policies.suppression_book),  # hard bounces: None records none
            policies=self.policies)  # after_delivery / after_bounce
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.handlers: dict[str, smtp.SubmissionHandler] = {}
        self.sockets: dict[str, socket.socket] = dict(sockets or {})
        self.api_socket: socket.socket | None = api_socket
        self._upstreams: dict[str, Upstream] = {}
        self._api: uvicorn_compat.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopped = asyncio.Event()

    # -- upstreams ---------------------------------------------------------------------------
    def load_upstreams(self, recs: list | None = None) -> None:
        """(Re)build the pools from the store; unchanged upstreams keep their open sessions."""
        d = self.settings.delivery
        pools: dict[str, list[Upstream]] = {}
        owners: dict[str, str | None] = {}
        seen = {}
        for rec in self.store.directory.list_upstreams() if recs is None else recs:
            if not rec.is_active:
                continue
            cfg = upstream_config(rec, self.admin.upstream_password(rec), default_max_connections=d.max_connections)
            up = self._upstreams.get(rec.id)
            if up is None or up.cfg != cfg:
                if up is not None:
                    up.close_idle()
                up = connection(self.settings, cfg)
            seen[rec.id] = up
            pools.setdefault(rec.ip_pool, []).append(up)
            owners[rec.ip_pool] = rec.account_id
        for uid, up in self._upstreams.items():
            if uid not in seen:
                up.close_idle()
        self._upstreams = seen
        served_before = {pool for pool, ups in self.router.ip_pools.items() if ups}
        self.router.set_ip_pools(pools, owners)
        if self.scheduler.running:
            for pool in pools.keys() - served_before:  # a pool gets its first upstream: its waiting mail is due
                self.scheduler.release_held(pool)

    async def _refresh_upstreams(self) -> None:
        while True:
            await asyncio.sleep(10)
            try:
                self.load_upstreams(await self.runner.read(self.store.directory.list_upstreams))
            except Exception:
                log.exception("could not reload upstreams")

    # -- lifecycle --------------------------------------------------------------------------
    def bind(self) -> None:
        """Bind every listener of this process (the API on worker 0) before anything starts: an address
        in use fails here with a :class:`ListenerBindError` naming the listener and the address."""
        if not self.sockets:
            self.sockets = bind_listeners(self.settings)
        if self.api_socket is None and self.worker == 0:
            self.api_socket = bind_api(self.settings)

    async def start(self) -> None:
        try:
            self.bind()
        except ListenerBindError:
            self._close_sockets()
            raise
        self.load_upstreams()
        self.pipeline.start()
        self._tasks += housekeeping.start(self)  # webhook deliveries, DKIM rotation (before outcomes flow)
        await self.scheduler.start()
        s = self.settings
        for name, sock in self.sockets.items():
            self.servers[name], self.handlers[name] = await smtp.serve_listener(
                self.pipeline, name=name, sock=sock, hostname=s.hostname, tls_context=self.tls_context,
                max_message_size=s.smtp.max_message_size, timeout=s.smtp.command_timeout,
                data_timeout=s.smtp.data_timeout, max_errors=s.smtp.max_errors)
            log.info("listening", extra={"listener": name, "address": "%s:%d" % sock.getsockname()[:2]})
        if self.api_socket is not None:
            host, port = parse_hostport(s.api.listen or "")
            proxies = [str(n) for n in s.api.trusted_proxies]
            # the client address (lockouts, /metrics from loopback) comes from X-Forwarded-For only
            # when the peer is a configured proxy; uvicorn alone would believe any loopback peer
            # bounded: connections (503 over it), a request's headers (size: 400; time: closed)
            config = uvicorn.Config(create_web_app(from_gateway(self)), host=host, port=port, log_level="warning",
                                    lifespan="off", access_log=False, proxy_headers=bool(proxies),
                                    forwarded_allow_ips=proxies or None, limit_concurrency=s.api.max_connections,
                                    http=uvicorn_compat.header_timeout_protocol(s.api.header_timeout),
                                    h11_max_incomplete_event_size=uvicorn_compat.MAX_HEADER_BYTES)
            self._api = uvicorn_compat.Server(config)  # the gateway owns the signals
            self._tasks.append(asyncio.create_task(self._api.serve(sockets=[self.api_socket]), name="api"))
            while not self._api.started:
                await asyncio.sleep(0.01)
                if self._tasks[-1].done():
                    self._tasks[-1].result()
        self._tasks.append(asyncio.create_task(self._refresh_upstreams(), name="upstream-refresh"))

    def _close_sockets(self) -> None:
        for sock in [*self.sockets.values(), self.api_socket]:
            if sock is not None:
                sock.close()

    def apply(self, settings: Settings) -> None:
        """A reload: every component takes the reloadable values it uses."""
        self.settings = settings
        self.admin.apply(settings)
        self.users.apply(settings)
        for handler in self.handlers.values():
            handler.apply(settings.smtp)
        self.pipeline.apply(settings)
        self.scheduler.apply(settings)

    def reload(self) -> Any:
        """SIGHUP: new certificate and reloadable settings for new connections (see relay.ops.reload)."""
        from relay.ops.reload import reload_gateway

        return reload_gateway(self)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: no new connections; idle sessions get ``421 4.3.2`` at once, open SMTP
        transactions may finish for ``grace`` seconds (``smtp.shutdown_timeout``), then the rest get
        the 421. Mail waiting for delivery is handed back at once (other nodes take it at their next
        poll; a single node delivers it when it starts again); deliveries in flight finish within
        what is left of the grace (at least a second), or are released; the store is flushed and
        this node's remaining leases (mail committed meanwhile) are handed back."""
        self.stopping = True
        grace = self.settings.smtp.shutdown_timeout if grace is None else grace
        for server in self.servers.values():
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:  # what waits goes to the other nodes now; attempts in flight finish below
            await self.scheduler.hand_back()
        except Exception:
            log.exception("could not hand back this node's mail; it is released when the node stops")
        await self._close_sessions(deadline)
        await self.scheduler.stop(timeout=max(1.0, deadline - loop.time()))
        await self.pipeline.close()
        try:
            await self.scheduler.recover()
        except Exception:
            log.exception("could not release this node's leases; they expire or are recovered at restart")
        if self._api:
            self._api.should_exit = True
        for t in self._tasks:
            if t.get_name() != "api":
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.runner.shutdown()
        self.store.close()
        self.stopped.set()

    async def _close_sessions(self, deadline: float) -> None:
        """Idle sessions get the 421 now; the others when their transaction ends, or at *deadline*."""
        loop = asyncio.get_running_loop()
        while any(h.live for h in self.handlers.values()):
            late = loop.time() >= deadline
            closing = [c for h in self.handlers.values() for c in list(h.live) if late or c.idle()]
            if closing:
                await asyncio.gather(*(c.shut_down() for c in closing), return_exceptions=True)
            if late:
                break
            await asyncio.sleep(0.02)
        end = loop.time() + 1.0  # let the closed sessions unwind
        while any(h.live for h in self.handlers.values()) and loop.time() < end:
            await asyncio.sleep(0.01)


def bind_listeners(settings: Settings) -> dict[str, socket.socket]:
    """The SMTP listeners' sockets; :class:`ListenerBindError` for the first that cannot be bound
    (those bound before it are closed again)."""
    sockets: dict[str, socket.socket] = {}
    try:
        for name, hostport in settings.smtp.listeners().items():
            sockets[name] = _bind_one(name, hostport, settings.smtp.workers > 1)
    except ListenerBindError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def bind_api(settings: Settings) -> socket.socket | None:
    """The HTTP API's socket (None when ``api.listen`` is off), bound here so that a failure reads as
    the SMTP listeners' do; uvicorn serves on it."""
    return _bind_one("api", parse_hostport(settings.api.listen), False) if settings.api.listen else None


async def serve(settings: Settings, *, worker: int = 0, sockets: dict[str, socket.socket] | None = None,
                api_socket: socket.socket | None = None, link: WorkerLink | None = None) -> None:
    """Run one gateway process until SIGTERM/SIGINT (graceful; a second one exits at once).

    Alone (no *link*), the process speaks systemd's notify protocol itself: READY=1 once every
    listener is bound and the store migrated, watchdog pings from the event loop, RELOADING=1 /
    READY=1 around a SIGHUP reload, STOPPING=1. As a forked worker it reports to the parent instead.
    """
    gw = Gateway(settings, worker=worker, sockets=sockets, api_socket=api_socket)
    await gw.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    first: list[float] = []

    def on_stop() -> None:
        if not first:
            first.append(loop.time())
            stop.set()
        elif loop.time() - first[0] > 0.2:  # not the same Ctrl-C seen twice (terminal + parent)
            log.warning("second stop signal: exiting now (every message answered 250 is committed)",
                        extra={"worker": worker})
            logging.shutdown()
            os._exit(0)

    def on_hup() -> None:
        if link is None:
            notify.reloading()
        try:
            gw.reload()
        except Exception:
            log.exception("reload failed")
        if link is None:
            notify.notify("READY=1")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    listeners = ", ".join(f"{n}={'%s:%d' % s.getsockname()[:2]}" for n, s in gw.sockets.items())
    log.info("relay started: %s, api=%s", listeners, settings.api.listen if worker == 0 else "(worker 0)",
             extra={"worker": worker})
    beat = link.beat if link else notify.watchdog_interval()
    if link is None:
        notify.notify("READY=1", f"STATUS=Relay serving: {listeners}")
        if beat:
            gw._tasks.append(asyncio.create_task(notify.watchdog(beat), name="watchdog"))
    else:
        link.report()
        if beat:
            gw._tasks.append(asyncio.create_task(_heartbeat(link), name="heartbeat"))
    await stop.wait()
    log.info("stopping", extra={"worker": worker})
    if link is None:
        notify.notify("STOPPING=1", "STATUS=Relay stopping: finishing open transactions")
    await gw.stop()
    log.info("stopped", extra={"worker": worker})


async def _heartbeat(link: WorkerLink) -> None:
    while True:
        await asyncio.sleep(link.beat or 1.0)
        link.report()


def _event_loop_policy() -> None:
    """uvloop when installed (it is a dependency on Linux/macOS): the same asyncio API, with the
    transports, timers and accept loop in C - a large share of the gateway's CPU per message."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


COMPAT_CHECKS = (aiosmtpd_compat.check, aiosmtplib_compat.check, asyncio_compat.check, dkimpy_compat.check, uvicorn_compat.check)


def check_libraries() -> None:
    """Refuse to start on a version of a library whose internals Relay uses but was not written for
    (each compat module names the library, the installed version and the range it supports)."""
    for check in COMPAT_CHECKS:
        try:
            check()
        except (RuntimeError, ConfigError) as exc:
            raise ConfigError(str(exc)) from None


def run(settings: Settings) -> int:
    """``relay serve``: one process, or ``smtp.workers`` forked processes sharing the listeners.

    With workers, the parent prepares what must exist once (master key, certificate, schema),
    binds the listening sockets, forks, and forwards SIGTERM/SIGINT to the workers. Each worker has
    its own delivery scheduler and store connections; worker 0 also serves the HTTP API.
    """
    n = settings.smtp.workers
    _event_loop_policy()
    # The store thread hands each group commit back through the event loop's thread: a short switch
    # interval keeps that hand-over (and so the time to the 250) well under the default 5 ms.
    sys.setswitchinterval(0.0002)
    if n <= 1:
        asyncio.run(serve(settings))
        return 0
    private_dir(settings.data_dir)
    master_key = load_or_create_master_key(settings.master_key_path)
    ensure_certificate(settings.tls.cert, settings.tls.key, settings.data_dir, settings.hostname)
    store = Store(settings.database_url)
    try:
        store.migrate()
        check_master_key(store, master_key)
    finally:
        store.close()
    sockets = bind_listeners(settings)
    try:
        api_socket = bind_api(settings)  # served by worker 0
    except ListenerBindError:
        for sock in sockets.values():
            sock.close()
        raise
    beat = beat_interval()
    read_fd, write_fd = os.pipe()
    children: dict[int, int] = {}
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            if i and api_socket is not None:
                api_socket.close()
            code = 0
            try:
                asyncio.run(serve(settings, worker=i, sockets=sockets, api_socket=api_socket if i == 0 else None,
                                  link=WorkerLink(write_fd, i, beat)))
            except BaseException:
                log.exception("worker failed", extra={"worker": i})
                code = 1
            logging.shutdown()
            os._exit(code)
        children[pid] = i
    os.close(write_fd)
    if api_socket is not None:
        api_socket.close()  # worker 0 holds it
    return supervise(children, read_fd, beat=beat)
