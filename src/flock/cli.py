"""`flock serve`: run the REST API of an app's Flock (or the built-in demo)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from flock.api.auth import APIKeyring
from flock.api.idempotency import store_from_url as idempotency_store_from_url
from flock.api.service import BlackboardHTTPService
from flock.core.orchestrator import Flock
from flock.core.store.sql import store_from_url
from flock.server import DEFAULT_GRACE_SECONDS, DrainingServer, drain_running_server

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Flock: agents on a blackboard.")

# Longer than the idle timeout of common load balancers (60 s), so the server never closes
# a kept-alive connection just as a client sends its next request on it.
KEEP_ALIVE_SECONDS = 75
DEFAULT_STORE = "sqlite:///.flock/blackboard.db"
DEFAULT_IDEMPOTENCY = "sqlite:///.flock/idempotency.db"
_SHARED_SCHEMES = ("postgresql://", "postgres://", "postgresql+asyncpg://", "redis://", "rediss://")


class CLIError(Exception):
    """A user-facing configuration error (printed without a traceback)."""


def demo_flock() -> Flock:
    """The demo cascade of `--demo`, from the installed package (`flock.demo`)."""
    from flock import demo  # imported on demand: it registers the demo's types

    return demo.build()


def load_flock(ref: str) -> Flock:
    """`path/to/app.py[:attr]` or `package.module[:attr]`; attr defaults to `flock`."""
    target, _, attr = ref.partition(":")
    attr = attr or "flock"
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        if not path.is_file():
            raise CLIError(f"no such file: {target}")
        module_name = f"flock_app_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise CLIError(f"cannot load {target} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(path.parent))
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise CLIError(f"cannot import {target!r}: {exc}") from exc
    obj: Any = getattr(module, attr, None)
    if callable(obj) and not isinstance(obj, Flock):
        obj = obj()
    if not isinstance(obj, Flock):
        raise CLIError(f"{ref}: expected `{attr}` to be a Flock (or a function returning one)")
    return obj


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def build_service(
    app_ref: str | None,
    *,
    demo: bool,
    store: str | None,
    idempotency: str | None,
    api_keys: str | None,
) -> BlackboardHTTPService:
    """Everything `flock serve` does before uvicorn starts (also used by each worker)."""
    if demo == (app_ref is not None):
        raise CLIError("give either an APP (path/to/app.py or module:attr) or --demo")
    flock = demo_flock() if demo else load_flock(str(app_ref))
    store_url = store or (DEFAULT_STORE if flock.store_is_default else None)
    if store_url:
        _ensure_sqlite_dir(store_url)
        flock.store = store_from_url(store_url)
    idem_url = idempotency or DEFAULT_IDEMPOTENCY
    _ensure_sqlite_dir(idem_url)
    keyring = APIKeyring.from_file(api_keys) if api_keys else None
    return BlackboardHTTPService(
        flock, idempotency=idempotency_store_from_url(idem_url), api_keys=keyring
    )


def worker_app() -> Any:
    """The ASGI app of one `--workers` process, configured through the environment."""
    service = build_service(
        os.environ.get("FLOCK_APP") or None,
        demo=os.environ.get("FLOCK_DEMO") == "1",
        store=os.environ.get("FLOCK_STORE"),
        idempotency=os.environ.get("FLOCK_IDEMPOTENCY"),
        api_keys=os.environ.get("FLOCK_API_KEYS"),
    )
    grace = os.environ.get("FLOCK_SHUTDOWN_GRACE")
    drain_running_server(service, float(grace) if grace else DEFAULT_GRACE_SECONDS)
    return service.app


@app.callback()
def _root() -> None:
    """Flock command line."""


@app.command()
def serve(
    app_ref: Annotated[
        str | None, typer.Argument(metavar="APP", help="path/to/app.py or module:attr")
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="serve the built-in demo cascade")] = False,
    host: Annotated[str, typer.Option(envvar="FLOCK_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="FLOCK_PORT")] = 8344,
    store: Annotated[
        str | None,
        typer.Option(envvar="FLOCK_STORE", help="memory://, sqlite:///path.db or postgresql://..."),
    ] = None,
    idempotency: Annotated[
        str | None,
        typer.Option(
            envvar="FLOCK_IDEMPOTENCY",
            help="memory://, sqlite:///..., postgresql://... or redis://...",
        ),
    ] = None,
    api_keys: Annotated[
        str | None, typer.Option(envvar="FLOCK_API_KEYS", help="JSON file of API keys")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="worker processes (needs shared stores)")] = 1,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            envvar="FLOCK_SHUTDOWN_GRACE",
            min=0,
            help="seconds to keep listening after SIGTERM/SIGINT, answering new requests 503 "
            "while those in flight finish; then stop listening and exit (0: at once)",
        ),
    ] = DEFAULT_GRACE_SECONDS,
    log_level: Annotated[str, typer.Option(envvar="FLOCK_LOG_LEVEL")] = "info",
) -> None:
    """Serve the REST API of APP's Flock, or of the demo with --demo."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if workers > 1:
            _check_shared(store, idempotency)
            os.environ.update(
                {
                    "FLOCK_APP": app_ref or "",
                    "FLOCK_DEMO": "1" if demo else "0",
                    "FLOCK_STORE": store or "",
                    "FLOCK_IDEMPOTENCY": idempotency or "",
                    "FLOCK_API_KEYS": api_keys or "",
                    "FLOCK_SHUTDOWN_GRACE": str(shutdown_grace),
                }
            )
            build_service(
                app_ref, demo=demo, store=store, idempotency=idempotency, api_keys=api_keys
            )  # fail fast, before forking
            uvicorn.run(
                "flock.cli:worker_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level=log_level,
                access_log=False,
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
            return
        service = build_service(
            app_ref, demo=demo, store=store, idempotency=idempotency, api_keys=api_keys
        )
    except (CLIError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    config = uvicorn.Config(
        service.app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=None,
    )
    DrainingServer(config, service, shutdown_grace).run()


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
