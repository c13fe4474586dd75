"""`flock serve`: run the REST API of an app's Flock (or the built-in demo).

Only typer is imported up front: FastAPI, SQLAlchemy, uvicorn and the app are imported once
a command runs, so `--help` and `--version` answer at once. Every expected failure (a bad
option, an app that does not load, a busy port) is one line on stderr and a non-zero exit;
`--debug` (or FLOCK_DEBUG=1) adds the traceback.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from flock.api.service import BlackboardHTTPService
    from flock.apps import LoadedApp
    from flock.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: rich alone costs ~0.25 s per `--help`
    pretty_exceptions_enable=False,
    help="Flock: agents on a blackboard.",
)
logger = logging.getLogger("flock.serve")

# Longer than the idle timeout of common load balancers (60 s), so the server never closes
# a kept-alive connection just as a client sends its next request on it.
KEEP_ALIVE_SECONDS = 75
# flock.server.GRACEFUL_SHUTDOWN_SECONDS (without importing uvicorn): past the drain, what
# still holds a connection gets this long before it is cancelled.
GRACEFUL_SHUTDOWN_SECONDS = 3
DATA_ROOT = Path(".flock")
_SHARED_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "redis://", "rediss://")
EXIT_USAGE = 2  # a bad option or app: fix the command line
EXIT_STARTUP = 3  # the server could not start (uvicorn's code for the same)
MIGRATE_HELP = (
    "upgrade an older PostgreSQL schema before serving (SQLite files are upgraded always) "
    "[env: FLOCK_MIGRATE]"
)


class CLIError(Exception):
    """A user-facing configuration error (printed without a traceback)."""


def data_dir(app_name: str) -> Path:
    """The default data folder of an app: `./.flock/<app name>/`, one per app."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", app_name).strip("._") or "app"
    return DATA_ROOT / safe


def listen_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on (host, port) before anything else is opened, so a busy port
    fails at once with a clear reason. Raises OSError with that reason."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def demo_flock() -> Any:
    """The demo cascade of `--demo`, from the installed package (`flock.demo`)."""
    from flock import demo  # imported on demand: it registers the demo's types

    return demo.build()


def load_flock(ref: str) -> Any:
    """The Flock that APP serves (see `flock.apps.load_app`)."""
    return _load(ref).flock


def _load(ref: str) -> LoadedApp:
    from flock.apps import AppLoadError, load_app

    try:
        return load_app(ref)
    except AppLoadError as exc:
        raise CLIError(str(exc)) from exc.__cause__


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


class ServePlan:
    """What `flock serve` serves, and with which stores (`None`: the app's own choice)."""

    def __init__(
        self, service: BlackboardHTTPService, name: str, store: str | None, idem: str | None
    ) -> None:
        self.service, self.name = service, name
        self.store_url, self.idempotency_url = store, idem

    def describe(self) -> list[str]:
        from flock.startup import describe_store

        agents = ", ".join(agent.name for agent in self.service.flock.agents) or "none"
        return [
            f"app {self.name}: agents {agents}",
            f"blackboard store: {describe_store(self.store_url)}",
            f"idempotency store: {describe_store(self.idempotency_url)}",
        ]


def plan_service(
    app_ref: str | None,
    *,
    demo: bool,
    store: str | None,
    idempotency: str | None,
    api_keys: str | None,
    run_worker: bool = True,
) -> ServePlan:
    """Everything `flock serve` does before uvicorn starts (also used by each worker)."""
    if demo == (app_ref is not None):
        raise CLIError("give either an APP (path/to/app.py or module:attr) or --demo")
    from flock.api.auth import APIKeyring
    from flock.api.idempotency import store_from_url as idempotency_store_from_url
    from flock.api.service import BlackboardHTTPService

    loaded = _load_app_or_demo(app_ref, demo)
    flock, folder = loaded.flock, data_dir(loaded.name)
    store_url = _set_store(flock, app_ref, store, folder)
    if not run_worker:
        _require_shared_store(flock, store_url, "--no-worker")
        flock.worker_enabled = False
    if loaded.service is not None:
        if idempotency or api_keys:
            raise CLIError(
                f"{app_ref} builds its own BlackboardHTTPService: set its idempotency store "
                "and API keys in code (or FLOCK_API_KEYS), not with --idempotency/--api-keys"
            )
        return ServePlan(loaded.service, loaded.name, store_url, None)
    idem_url = idempotency or f"sqlite:///{folder}/idempotency.db"
    _ensure_sqlite_dir(idem_url)
    keyring = APIKeyring.from_file(api_keys) if api_keys else None
    service = BlackboardHTTPService(
        flock, idempotency=idempotency_store_from_url(idem_url), api_keys=keyring
    )
    return ServePlan(service, loaded.name, store_url, idem_url)


def _load_app_or_demo(app_ref: str | None, demo: bool) -> LoadedApp:
    if demo:
        from flock.apps import LoadedApp

        return LoadedApp("demo", demo_flock())
    return _load(str(app_ref))


def _set_store(flock: Any, app_ref: str | None, store: str | None, folder: Path) -> str | None:
    """Give the app the store named by `store` (default: its folder's SQLite file, unless
    the app chose a store itself); the URL used, None for the app's own."""
    from flock.core.store.sql import store_from_url

    store_url = store or (f"sqlite:///{folder}/blackboard.db" if flock.store_is_default else None)
    if store_url:
        if flock.stats.artifacts_published:
            raise CLIError(
                f"{app_ref} published artifacts while it was being imported (a top-level "
                '`asyncio.run(...)`?): put that code under `if __name__ == "__main__":`, '
                "so that `flock serve` can set the store first"
            )
        _ensure_sqlite_dir(store_url)
        flock.store = store_from_url(store_url)
    return store_url


def _require_shared_store(flock: Any, store_url: str | None, what: str) -> None:
    from flock.core.store.memory import InMemoryBlackboardStore

    if isinstance(flock.store, InMemoryBlackboardStore):
        raise CLIError(
            f"{what} needs a store other processes share (sqlite:///path.db on one machine, "
            f"postgresql://... on many), not {store_url or 'the app`s in-memory store'}: "
            "runs in memory are seen by no other process"
        )


def build_service(
    app_ref: str | None,
    *,
    demo: bool,
    store: str | None,
    idempotency: str | None,
    api_keys: str | None,
    run_worker: bool = True,
) -> BlackboardHTTPService:
    """The service `flock serve` would serve (see `plan_service`)."""
    return plan_service(
        app_ref,
        demo=demo,
        store=store,
        idempotency=idempotency,
        api_keys=api_keys,
        run_worker=run_worker,
    ).service


def worker_app() -> Any:
    """The ASGI app of one `--workers` process, configured through the environment."""
    from flock.logs import configure as configure_logging
    from flock.server import drain_running_server
    from flock.settings import load_settings

    settings = load_settings()
    # A process of its own: it logs as the command that started it asked.
    configure_logging(settings.log_level, settings.log_format)
    service = build_service(
        settings.app,
        demo=settings.demo,
        store=settings.store,
        idempotency=settings.idempotency,
        api_keys=settings.api_keys,
        run_worker=settings.worker,
    )
    drain_running_server(service, settings.shutdown_grace)
    return service.app


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"flock {version('flock')}")
        except PackageNotFoundError:  # a source tree without an install
            typer.echo("flock (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Flock command line."""


@app.command()
def serve(
    app_ref: Annotated[
        str | None,
        typer.Argument(
            metavar="APP",
            help="path/to/app.py or module:attr (a Flock, a BlackboardHTTPService or its .app)",
        ),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="serve the built-in demo cascade")] = False,
    host: Annotated[str | None, typer.Option(help="[env: FLOCK_HOST; default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[env: FLOCK_PORT; default: 8344]")] = None,
    store: Annotated[
        str | None,
        typer.Option(
            help="memory://, sqlite:///path.db or postgresql://... "
            "[default: sqlite:///.flock/<app>/blackboard.db]",
        ),
    ] = None,
    idempotency: Annotated[
        str | None,
        typer.Option(
            help="memory://, sqlite:///..., postgresql://... or redis://... "
            "[default: sqlite:///.flock/<app>/idempotency.db]",
        ),
    ] = None,
    api_keys: Annotated[
        str | None, typer.Option(help="JSON file of API keys [env: FLOCK_API_KEYS]")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (needs shared stores)")] = 1,
    run_worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="execute agent runs in this process too (--no-worker: HTTP only, runs are "
            "executed by `flock worker` processes sharing the store) [env: FLOCK_WORKER]",
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            help="seconds to keep listening after SIGTERM/SIGINT, answering new requests 503 "
            "while those in flight finish; then sync calls still waiting answer "
            "completed=false and the process exits (0: at once) "
            "[env: FLOCK_SHUTDOWN_GRACE; default: 30]",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="[env: FLOCK_LOG_LEVEL; default: info]")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="text, or json: one JSON object per line (time, level, logger, message, "
            "correlation_id, run_id, agent) [env: FLOCK_LOG_FORMAT; default: text]",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="print tracebacks of errors [env: FLOCK_DEBUG]")
    ] = False,
    migrate: Annotated[bool, typer.Option("--migrate", help=MIGRATE_HELP)] = False,
) -> None:
    """Serve the REST API of APP's Flock, or of the demo with --demo."""
    try:
        config = _serving_settings(
            debug,
            migrate=migrate or None,
            host=host,
            port=port,
            store=store,
            idempotency=idempotency,
            api_keys=api_keys,
            worker=run_worker,
            shutdown_grace=shutdown_grace,
            log_level=log_level,
            log_format=log_format,
        )
        debug = config.debug
        _check_arguments(app_ref, demo)
        args = (
            app_ref, demo, config.host, config.port, config.store, config.idempotency,
            config.api_keys, config.worker,
        )  # fmt: skip
        if workers > 1:
            _serve_workers(
                *args,
                workers,
                config.shutdown_grace,
                config.log_level,
                config.log_format,
                config.migrate,
            )
        else:
            _serve_one(
                *args, config.shutdown_grace, config.log_level, config.log_format, config.migrate
            )
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(exc, debug)


def _settings(debug: bool, **options: Any) -> Settings:
    """The settings of a command: the environment, its options on top; a bad value exits
    with one line naming it (see `flock.settings`)."""
    from flock.settings import load_settings

    try:
        return load_settings(debug=debug or None, **options)
    except ValueError as exc:
        _fail(CLIError(str(exc)), debug)
        raise  # not reached: _fail exits


def _serving_settings(debug: bool, **options: Any) -> Settings:
    """The settings of `serve` and `worker`, with the process's logging configured by them."""
    from flock.logs import configure as configure_logging

    config = _settings(debug, **options)
    configure_logging(config.log_level, config.log_format)
    return config


def _check_arguments(app_ref: str | None, demo: bool) -> None:
    """What can be refused before the port is bound and anything is imported."""
    if demo == (app_ref is not None):
        raise CLIError("give either an APP (path/to/app.py or module:attr) or --demo")
    if app_ref is not None:
        from flock.apps import AppLoadError, check_app_ref

        try:
            check_app_ref(app_ref)
        except AppLoadError as exc:
            raise CLIError(str(exc)) from None


def _fail(exc: BaseException, debug: bool) -> None:
    """One line on stderr (the traceback too with --debug), then a non-zero exit."""
    from flock.apps import describe_load_failure

    expected = isinstance(exc, CLIError | ValueError | OSError)
    message = str(exc) if expected else f"unexpected error: {describe_load_failure(exc)}"
    if debug:
        traceback.print_exception(exc.__cause__ or exc)
    elif exc.__cause__ is not None or not expected:
        message += " (--debug shows the traceback)"
    _error_line(message)
    raise typer.Exit(EXIT_USAGE if expected else 1) from None


def _error_line(message: str) -> None:
    """`error: MESSAGE` on stderr; with JSON logs, a JSON log record like every other line."""
    from flock import logs

    if logs.configured_format() == "json":
        logger.error("error: %s", message)
    else:
        typer.echo(f"error: {message}", err=True)


def _serve_one(
    app_ref: str | None,
    demo: bool,
    host: str,
    port: int,
    store: str | None,
    idempotency: str | None,
    api_keys: str | None,
    run_worker: bool,
    grace: float,
    log_level: str,
    log_format: str = "text",
    migrate: bool = False,
) -> None:
    try:  # before the app or a store is opened: a busy port fails at once, leaving nothing
        sock = listen_socket(host, port)
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        plan = plan_service(
            app_ref,
            demo=demo,
            store=store,
            idempotency=idempotency,
            api_keys=api_keys,
            run_worker=run_worker,
        )
        import uvicorn

        from flock.logs import parse_format, uvicorn_log_config
        from flock.startup import ReportingServer

        for line in plan.describe():
            logger.info("%s", line)
        _prepare_schemas(plan.store_url, plan.idempotency_url, migrate)
        config = uvicorn.Config(
            plan.service.app,
            host=host,
            port=port,
            log_level=log_level,
            log_config=uvicorn_log_config(parse_format(log_format)),
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = ReportingServer(config, plan.service, grace)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        _error_line("the server did not start (see the log above)")
        raise typer.Exit(EXIT_STARTUP)


def _serve_workers(
    app_ref: str | None,
    demo: bool,
    host: str,
    port: int,
    store: str | None,
    idempotency: str | None,
    api_keys: str | None,
    run_worker: bool,
    workers: int,
    grace: float,
    log_level: str,
    log_format: str = "text",
    migrate: bool = False,
) -> None:
    _check_shared(store, idempotency)
    try:  # uvicorn binds in its supervisor; a busy port fails here first, with a reason
        listen_socket(host, port).close()
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    os.environ.update(
        {
            "FLOCK_APP": app_ref or "",
            "FLOCK_DEMO": "1" if demo else "0",
            "FLOCK_STORE": store or "",
            "FLOCK_IDEMPOTENCY": idempotency or "",
            "FLOCK_API_KEYS": api_keys or "",
            "FLOCK_SHUTDOWN_GRACE": str(grace),
            "FLOCK_WORKER": "1" if run_worker else "0",
            "FLOCK_LOG_LEVEL": log_level,
            "FLOCK_LOG_FORMAT": log_format,
            "FLOCK_MIGRATE": "0",  # the supervisor upgraded the schemas before forking
        }
    )
    plan = plan_service(
        app_ref,
        demo=demo,
        store=store,
        idempotency=idempotency,
        api_keys=api_keys,
        run_worker=run_worker,
    )
    for line in plan.describe():  # fail fast, before forking
        logger.info("%s", line)
    _prepare_schemas(plan.store_url, plan.idempotency_url, migrate)
    import uvicorn

    from flock.logs import parse_format, uvicorn_log_config

    uvicorn.run(
        "flock.cli:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=uvicorn_log_config(parse_format(log_format)),
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


@app.command()
def worker(
    app_ref: Annotated[
        str | None,
        typer.Argument(metavar="APP", help="path/to/app.py or module:attr, as for serve"),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="the built-in demo cascade")] = False,
    store: Annotated[
        str | None,
        typer.Option(
            help="sqlite:///path.db or postgresql://..., the store the servers use "
            "[default: sqlite:///.flock/<app>/blackboard.db]",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="runs executed at once [env: FLOCK_WORKER_CONCURRENCY; default: 64]"),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="serve /metrics on this port [env: FLOCK_METRICS_PORT]"),
    ] = None,
    shutdown_grace: Annotated[
        float | None,
        typer.Option(
            help="seconds running engines get after SIGTERM/SIGINT before their runs are "
            "released to other processes [env: FLOCK_SHUTDOWN_GRACE; default: 30]",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="[env: FLOCK_LOG_LEVEL; default: info]")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="text, or json: one JSON object per line (time, level, logger, message, "
            "correlation_id, run_id, agent) [env: FLOCK_LOG_FORMAT; default: text]",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="print tracebacks of errors [env: FLOCK_DEBUG]")
    ] = False,
    migrate: Annotated[bool, typer.Option("--migrate", help=MIGRATE_HELP)] = False,
) -> None:
    """Execute APP's agent runs from a shared store, serving no HTTP API."""
    try:
        config = _serving_settings(
            debug,
            migrate=migrate or None,
            store=store,
            worker_concurrency=concurrency,
            metrics_port=metrics_port,
            shutdown_grace=shutdown_grace,
            log_level=log_level,
            log_format=log_format,
        )
        debug = config.debug
        _check_arguments(app_ref, demo)
        loaded = _load_app_or_demo(app_ref, demo)
        flock = loaded.flock
        store_url = _set_store(flock, app_ref, config.store, data_dir(loaded.name))
        _require_shared_store(flock, store_url, "flock worker")
        if concurrency is not None:
            from dataclasses import replace

            flock.worker.settings = replace(flock.worker.settings, concurrency=concurrency)
        from flock.startup import describe_store

        logger.info("app %s: store %s", loaded.name, describe_store(store_url))
        _prepare_schemas(store_url, None, config.migrate)
        import asyncio

        from flock.worker_process import run_worker

        asyncio.run(run_worker(flock, config.shutdown_grace, config.metrics_port))
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(exc, debug)


def _prepare_schemas(store: str | None, idempotency: str | None, migrate: bool) -> None:
    """Before serving: create, check or upgrade the SQL stores' schemas (`flock.migrate`)."""
    import asyncio

    from flock.core.store.migrations import SchemaVersionError
    from flock.migrate import prepare_for_serving

    try:
        asyncio.run(prepare_for_serving(store, idempotency, migrate=migrate))
    except SchemaVersionError as exc:
        raise CLIError(str(exc)) from None


db_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="The schema versions of the SQL stores: show them, upgrade them.",
)
app.add_typer(db_app, name="db")
DB_STORE_HELP = "the blackboard store: sqlite:///path.db or postgresql://... [env: FLOCK_STORE]"
DB_IDEMPOTENCY_HELP = (
    "the idempotency store: sqlite:///path.db or postgresql://... [env: FLOCK_IDEMPOTENCY]"
)


def _db_command(action: str, store: str | None, idempotency: str | None, debug: bool) -> None:
    import asyncio

    from flock import migrate

    try:
        config = _settings(debug, store=store, idempotency=idempotency)
        if not (config.store or config.idempotency):
            raise CLIError("give --store URL and/or --idempotency URL (a SQL store)")
        run = migrate.current if action == "current" else migrate.upgrade
        lines = asyncio.run(run(config.store, config.idempotency))
        if not lines:
            raise CLIError("neither URL names a SQL store (memory and Redis keep no schema)")
        for line in lines:
            typer.echo(line)
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(exc, debug)


@db_app.command("current")
def db_current(
    store: Annotated[str | None, typer.Option(help=DB_STORE_HELP)] = None,
    idempotency: Annotated[str | None, typer.Option(help=DB_IDEMPOTENCY_HELP)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="print tracebacks of errors")] = False,
) -> None:
    """Print each store's schema version and this Flock's; changes nothing."""
    _db_command("current", store, idempotency, debug)


@db_app.command("upgrade")
def db_upgrade(
    store: Annotated[str | None, typer.Option(help=DB_STORE_HELP)] = None,
    idempotency: Annotated[str | None, typer.Option(help=DB_IDEMPOTENCY_HELP)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="print tracebacks of errors")] = False,
) -> None:
    """Upgrade each store's schema to this Flock's version (creating empty ones)."""
    _db_command("upgrade", store, idempotency, debug)


def _check_shared(store: str | None, idempotency: str | None) -> None:
    shared = all(url and url.startswith(_SHARED_SCHEMES) for url in (store, idempotency))
    if not shared or not (store or "").startswith(_SHARED_SCHEMES[:3]):
        raise CLIError(
            "--workers > 1 needs shared stores: --store postgresql://... and "
            "--idempotency postgresql://... or redis://... (each worker runs its own cascades, "
            "so SQLite files or memory would split the data between processes)"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
