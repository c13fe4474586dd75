"""The type registry: maps artifact type names to Pydantic models and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, overload

from pydantic import BaseModel

M = TypeVar("M", bound=type[BaseModel])


class RegistryError(LookupError):
    """An artifact type name is unknown, or two models claim one name."""


class TypeRegistry:
    """Names <-> models. Re-registering the same model under its name is a no-op."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[BaseModel]] = {}
        self._by_model: dict[type[BaseModel], str] = {}

    def register(self, model: type[BaseModel], name: str | None = None) -> str:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"flock types must be pydantic BaseModel subclasses, got {model!r}")
        type_name = name or model.__name__
        if not type_name or not type_name.strip():
            raise RegistryError("a flock type name must not be empty")
        existing = self._by_name.get(type_name)
        if existing is not None and existing is not model:
            if _same_definition(existing, model):
                # The defining module was loaded again (`flock serve app.py`): the new class wins.
                del self._by_model[existing]
            else:
                newcomer = _path(model)
                if newcomer == _path(existing):
                    newcomer = f"another definition of {newcomer} (its fields differ)"
                raise RegistryError(
                    f"type name {type_name!r} is already registered to {_path(existing)}; "
                    f"cannot register {newcomer} under it"
                )
        previous_name = self._by_model.get(model)
        if previous_name is not None and previous_name != type_name:
            raise RegistryError(
                f"{model.__qualname__} is already registered as {previous_name!r}, "
                f"not {type_name!r}"
            )
        self._by_name[type_name] = model
        self._by_model[model] = type_name
        return type_name

    def resolve(self, name: str) -> type[BaseModel]:
        try:
            return self._by_name[name]
        except KeyError:
            raise RegistryError(f"unknown artifact type {name!r}") from None

    def name_for(self, model: type[BaseModel] | BaseModel) -> str:
        cls = model if isinstance(model, type) else type(model)
        try:
            return self._by_model[cls]
        except KeyError:
            raise RegistryError(
                f"{cls.__qualname__} is not a registered flock type (decorate it with @flock_type)"
            ) from None

    def is_registered(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return sorted(self._by_name)


def _same_definition(a: type[BaseModel], b: type[BaseModel]) -> bool:
    """The same class defined again: same module, name and fields (a module loaded twice)."""
    return (
        a.__module__ == b.__module__
        and a.__qualname__ == b.__qualname__
        and _fields(a) == _fields(b)
    )


def _path(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


def _fields(model: type[BaseModel]) -> dict[str, tuple[str, bool]]:
    return {
        name: (repr(field.annotation), field.is_required())
        for name, field in model.model_fields.items()
    }


type_registry = TypeRegistry()


@overload
def flock_type(model: M, /) -> M: ...
@overload
def flock_type(*, name: str | None = None) -> Callable[[M], M]: ...
def flock_type(model: M | None = None, /, *, name: str | None = None) -> M | Callable[[M], M]:
    """Register a Pydantic model as an artifact type: `@flock_type` or `@flock_type(name=...)`."""

    def decorate(cls: M) -> M:
        type_registry.register(cls, name)
        return cls

    if model is not None:
        return decorate(model)
    return decorate


__all__ = ["RegistryError", "TypeRegistry", "flock_type", "type_registry"]
