"""What `flock serve APP` serves: loading APP and finding its Flock or its service.

APP is `path/to/app.py[:attr]` or `package.module[:attr]`. The attribute (default `flock`;
when the module has none, `service` then `app`) is a `Flock`, a `BlackboardHTTPService`,
the ASGI app of one (`service.app`), or a function returning one of these. Every way this
can go wrong is an `AppLoadError` with a one-line message; the original exception stays
its `__cause__` for `--debug`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flock.api.service import BlackboardHTTPService
    from flock.core.orchestrator import Flock

DEFAULT_ATTRS = ("flock", "service", "app")


class AppLoadError(Exception):
    """APP could not be loaded or holds nothing `flock serve` can serve."""


@dataclass
class LoadedApp:
    """A loaded APP: its short `name` (for its data folder), its Flock, and the service
    the app built itself, if it did (then it is served as it is)."""

    name: str
    flock: Flock
    service: BlackboardHTTPService | None = None


def check_app_ref(ref: str) -> None:
    """The checks that need no import: a file APP must exist."""
    target = ref.partition(":")[0]
    if (target.endswith(".py") or os.sep in target) and not Path(target).is_file():
        raise AppLoadError(f"no such file: {target}")


def load_app(ref: str) -> LoadedApp:
    """Import APP and return what it serves (see the module docstring)."""
    check_app_ref(ref)
    target, _, attr = ref.partition(":")
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        name = path.stem
        module = _exec_file(path, target)
    else:
        name = target.rsplit(".", 1)[-1]
        module = _import_module(target)
    obj = _attribute(module, ref, attr)
    return _as_loaded(obj, name, ref)


def _exec_file(path: Path, shown: str) -> ModuleType:
    module_name = f"flock_app_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot load {shown} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise AppLoadError(f"cannot load {shown}: {describe_load_failure(exc)}") from exc
    return module


def _import_module(target: str) -> ModuleType:
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise AppLoadError(f"cannot import {target!r}: no module named {exc.name!r}") from exc
        raise AppLoadError(f"cannot import {target!r}: {describe_load_failure(exc)}") from exc
    except Exception as exc:
        raise AppLoadError(f"cannot import {target!r}: {describe_load_failure(exc)}") from exc


def _attribute(module: ModuleType, ref: str, attr: str) -> Any:
    names = (attr,) if attr else DEFAULT_ATTRS
    for name in names:
        value = getattr(module, name, None)
        # `import flock` binds the package itself to the default name: not what is meant
        if value is not None and (attr or not isinstance(value, ModuleType)):
            return value
    wanted = " or ".join(f"`{n}`" for n in names)
    raise AppLoadError(f"{ref}: the module has no {wanted}")


def _as_loaded(obj: Any, name: str, ref: str) -> LoadedApp:
    from flock.api.service import BlackboardHTTPService
    from flock.core.orchestrator import Flock

    def served(value: Any) -> LoadedApp | None:
        if isinstance(value, Flock):
            return LoadedApp(name, value)
        if isinstance(value, BlackboardHTTPService):
            return LoadedApp(name, value.flock, value)
        state = getattr(value, "state", None)
        service = getattr(state, "flock_service", None)
        if isinstance(service, BlackboardHTTPService) and service.app is value:
            return LoadedApp(name, service.flock, service)
        return None

    loaded = served(obj)
    if loaded is None and callable(obj) and not isinstance(obj, type):
        try:
            loaded = served(obj())
        except Exception as exc:
            raise AppLoadError(f"{ref}: calling it failed: {describe_load_failure(exc)}") from exc
    if loaded is None:
        raise AppLoadError(
            f"{ref}: expected a Flock, a BlackboardHTTPService or its .app "
            f"(or a function returning one), got {type(obj).__name__}"
        )
    return loaded


def describe_load_failure(exc: BaseException) -> str:
    """`file:line: Type: message` of where `exc` was raised, preferring the app's own code
    (the innermost frame outside Flock and installed packages)."""
    if isinstance(exc, SyntaxError):
        where = f"{_shorten(exc.filename)}:{exc.lineno}: " if exc.filename else ""
        return f"{where}{type(exc).__name__}: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    package_dir = str(Path(__file__).parent)
    own = [
        f
        for f in frames
        if not f.filename.startswith(package_dir)
        and "site-packages" not in f.filename
        and not f.filename.startswith("<frozen")
    ]
    chosen = own or frames
    where = f"{_shorten(chosen[-1].filename)}:{chosen[-1].lineno}: " if chosen else ""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"{where}{type(exc).__name__}{': ' + message if message else ''}"


def _shorten(filename: str) -> str:
    try:
        return os.path.relpath(filename)
    except ValueError:
        return filename


__all__ = ["AppLoadError", "LoadedApp", "check_app_ref", "describe_load_failure", "load_app"]
