"""`fitserve serve | worker | migrate`: run the service, one standalone worker, or the migrations.

`serve` is a small supervisor: it upgrades the schema (once, before anything starts), binds the
port, starts N API processes on it (`--api-processes`: uvicorn on the app factory, each given a
socket of its own bound to that port with SO_REUSEPORT when N > 1, see `_listen`) and N worker
processes beside them (each child in its own process group, so one Ctrl-C reaches the
supervisor alone and every child gets exactly one SIGTERM), restarts a worker that exits, and on
Ctrl-C or SIGTERM stops them all, giving workers their grace period to hand running jobs back.
An API process that exits stops the service (exit code: its own, 128 + N for signal N, or 1); a
deployment's process manager restarts the whole.

With more than one API process, each keeps its own model cache and verified-keys cache and
everything shared lives in the database; their Prometheus figures are gathered in a private
directory this supervisor makes and removes (app/prometheus.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from app.config import MULTIPROCESS_DIR_ENV, Settings
from app.parent_death import die_with_parent

log = logging.getLogger("fitserve.serve")

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")
# A worker that exits sooner than this after starting is restarted after a growing delay.
RESTART_BACKOFF_MAX_SECONDS = 30.0
_WORKER_MAIN = "import sys; from app.cli import main; sys.exit(main())"
_API_MAIN = "import sys; from app.cli.server import run_api; sys.exit(run_api(int(sys.argv[1])))"
UVICORN_STARTUP_FAILURE = 3  # uvicorn's exit code when the app's startup fails
UVICORN_BACKLOG = 2048  # uvicorn's default: connections waiting to be accepted, per socket


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the API and N workers", description="Serve the API with N workers."
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve.add_argument("--workers", type=_non_negative, default=1, help="workers (0: none)")
    serve.add_argument(
        "--api-processes",
        type=_positive,
        default=1,
        help="API processes sharing the port and the database (default 1; about one per core "
        "for CPU-bound prediction traffic, each with its own model cache)",
    )
    serve.set_defaults(handler=_serve)

    worker = subparsers.add_parser(
        "worker", help="run one worker", description="Claim and train queued jobs until stopped."
    )
    worker.add_argument(
        "--device",
        type=_device,
        default=None,
        help="auto (CUDA when present), cpu, cuda or cuda:N (default: FITSERVE_DEVICE or auto)",
    )
    worker.set_defaults(handler=_worker)

    migrate = subparsers.add_parser(
        "migrate", help="upgrade the database schema", description="Apply every migration."
    )
    migrate.set_defaults(handler=_migrate)

    for parser in (serve, worker, migrate):
        parser.add_argument(
            "--database-url",
            default=None,
            help="database URL (default: FITSERVE_DATABASE_URL or sqlite:///./fitserve.db)",
        )


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _device(text: str) -> str:
    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda or cuda:N")
    return text


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from app.db import upgrade_head

    settings = _settings(args)
    upgrade_head(settings.database_url)
    print(f"{make_url(settings.database_url).render_as_string()} is at the latest schema")
    return 0


def _worker(args: argparse.Namespace) -> int:
    _logging()
    from app.queue.worker import run_worker

    return run_worker(_settings(args), device=args.device)


# ---------------------------------------------------------------------- serve


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself is killed (Linux), instead of lingering."""
    die_with_parent(signal.SIGTERM)


class _Child:
    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()
    ) -> None:
        self.name, self.argv, self.env, self.pass_fds = name, argv, env, pass_fds
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_delay = 1.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            pass_fds=self.pass_fds,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def run_api(fd: int) -> int:
    """One API process: uvicorn serving the app factory (settings from the environment) on the
    socket `serve` bound and handed down as descriptor `fd`."""
    import uvicorn

    listener = socket.socket(fileno=fd)  # family and type are read from the descriptor
    server = uvicorn.Server(uvicorn.Config("app.main:create_app", factory=True))
    server.run(sockets=[listener])
    return 0 if server.started else UVICORN_STARTUP_FAILURE


def _listen(host: str, port: int, count: int) -> list[socket.socket]:
    """A listening socket on host:port for each of `count` API processes. A connection made
    while they start waits in its socket's backlog until that process is up.

    Several are bound with SO_REUSEPORT: the kernel then spreads new connections over the
    processes by a hash of their addresses. (With one shared socket the process that woke first
    accepted a whole burst: a client's 16 connections all went to one of two processes.) A plain
    bind comes first, so a port another server listens on is refused as it would be with one
    process, instead of quietly shared with it; and these listen at once, so a second `serve`
    started meanwhile is refused in turn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    first = _bind(family, host, port, reuse_port=False)
    bound = [first]
    try:
        if count > 1:
            port = first.getsockname()[1]  # the port picked, where 0 asked for any
            bound.pop().close()
            for _ in range(count):
                bound.append(_bind(family, host, port, reuse_port=True))
        for sock in bound:
            sock.listen(UVICORN_BACKLOG)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _bind(family: socket.AddressFamily, host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _serve(args: argparse.Namespace) -> int:
    _logging()
    from app.db import upgrade_head

    settings = _settings(args, host=args.host, port=args.port)
    upgrade_head(settings.database_url)
    if not _keys_in_place(settings):
        return 2
    try:
        listeners = _listen(settings.host, settings.port, args.api_processes)
    except OSError as exc:
        print(
            f"fitserve serve: can't listen on {settings.host} port {settings.port}: "
            f"{exc.strerror or exc} (is another server using it? pick another with --port)",
            file=sys.stderr,
        )
        return 1
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            log.info("%s: stopping", signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    metrics_dir = tempfile.mkdtemp(prefix="fitserve-metrics-") if args.api_processes > 1 else None
    try:
        apis, workers = _children(args, settings, listeners, metrics_dir)
        for child in (*apis, *workers):
            child.start()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        port = listeners[0].getsockname()[1]
        log.info("serving http://%s:%d with %d API process(es)", host, port, len(apis))
        for sock in listeners:
            sock.close()  # the API processes hold them: the port is free once they stop
        code = _supervise(apis, workers, lambda: stopping)
        return _stop_all([*apis, *workers], settings.shutdown_grace_seconds) or code
    finally:
        for sock in listeners:
            sock.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _children(
    args: argparse.Namespace,
    settings: Settings,
    listeners: list[socket.socket],
    metrics_dir: str | None,
) -> tuple[list[_Child], list[_Child]]:
    """The API processes (each given its socket) and the workers, not yet started."""
    env = dict(os.environ)
    # The children read their settings from the environment, as any deployment's would.
    env.update(
        FITSERVE_DATABASE_URL=settings.database_url,
        FITSERVE_HOST=settings.host,
        FITSERVE_PORT=str(settings.port),
    )
    for name in (MULTIPROCESS_DIR_ENV, MULTIPROCESS_DIR_ENV.lower()):
        env.pop(name, None)  # prometheus_client writes wherever this points: only ours, below
    if args.workers and settings.cpu_threads is None:
        env["FITSERVE_CPU_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    if args.workers and "FITSERVE_MAX_RUNNING_JOBS_PER_KEY" not in env:
        # One key gets at most half of these workers: the rest stay for the other keys.
        env["FITSERVE_MAX_RUNNING_JOBS_PER_KEY"] = str(max(1, args.workers // 2))
    api_env = dict(env)
    if metrics_dir is not None:
        api_env[MULTIPROCESS_DIR_ENV] = metrics_dir
        log.info("the API processes' metrics are gathered in %s", metrics_dir)
    apis = [
        _Child(
            "api" if len(listeners) == 1 else f"api {i + 1}",
            [sys.executable, "-c", _API_MAIN, str(sock.fileno())],
            api_env,
            pass_fds=(sock.fileno(),),
        )
        for i, sock in enumerate(listeners)
    ]
    workers = [
        _Child(f"worker {i + 1}", [sys.executable, "-c", _WORKER_MAIN, "worker"], env)
        for i in range(args.workers)
    ]
    return apis, workers


def _supervise(apis: list[_Child], workers: list[_Child], stopping: Callable[[], bool]) -> int:
    """Restart workers that exit until asked to stop; an API process that exits ends the service
    with its exit code (128 + N when signal N killed it, as shells report it; 1 for a 0)."""
    pending: dict[_Child, float] = {}  # worker -> when to restart it
    while not stopping():
        time.sleep(0.2)
        for api in apis:
            code = api.exit_code()
            if code is not None:
                log.error("%s exited with code %d; stopping", api.name, code)
                return 128 - code if code < 0 else code or 1
        now = time.monotonic()
        for child in workers:
            exited = child.exit_code()
            if exited is not None and child not in pending:
                quick = now - child.started < RESTART_BACKOFF_MAX_SECONDS
                child.restart_delay = (
                    min(child.restart_delay * 2, RESTART_BACKOFF_MAX_SECONDS) if quick else 1.0
                )
                log.warning(
                    "%s exited with code %d; restarting in %.0fs",
                    child.name,
                    exited,
                    child.restart_delay,
                )
                pending[child] = now + child.restart_delay
        for child, when in list(pending.items()):
            if now >= when:
                del pending[child]
                child.start()
    return 0


def _keys_in_place(settings: Settings) -> bool:
    """Off loopback, refuse to start until an API key exists (app.auth.ensure_keys_for_host)."""
    from app.auth import ApiKeysMissing, ensure_keys_for_host
    from app.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        ensure_keys_for_host(settings, engine)
    except ApiKeysMissing as exc:
        print(f"fitserve serve: {exc}", file=sys.stderr)
        return False
    finally:
        engine.dispose()
    return True


def _stop_all(children: list[_Child], grace: float) -> int:
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace + 10.0  # workers finish an epoch, then hand jobs back
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", child.name)
            child.process.kill()
            child.process.wait()
    return 0
