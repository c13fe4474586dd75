"""The type registry: `@flock_type`, resolve/name_for, and the name-clash rules.

The registry is process-global, so every type here gets a name unique to this test run.
"""

from __future__ import annotations

import uuid

import pytest
from pydantic import BaseModel

from flock import RegistryError, flock_type, type_registry


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_bare_decorator_registers_under_the_class_name() -> None:
    # A bare decorator uses __name__, so build a class whose name is unique.
    cls = type(unique("Bare"), (BaseModel,), {"__annotations__": {"x": int}})
    decorated = flock_type(cls)

    assert decorated is cls
    assert type_registry.resolve(cls.__name__) is cls
    assert type_registry.name_for(cls) == cls.__name__
    assert type_registry.is_registered(cls.__name__)


def test_bare_decorator_syntax() -> None:
    @flock_type
    class RegistryBareSyntaxModel(BaseModel):
        x: int

    assert type_registry.name_for(RegistryBareSyntaxModel) == "RegistryBareSyntaxModel"
    assert type_registry.resolve("RegistryBareSyntaxModel") is RegistryBareSyntaxModel


def test_decorator_with_name() -> None:
    name = unique("Named")

    @flock_type(name=name)
    class Thing(BaseModel):
        x: int

    assert type_registry.resolve(name) is Thing
    assert type_registry.name_for(Thing) == name
    # name_for also accepts an instance
    assert type_registry.name_for(Thing(x=1)) == name
    assert name in type_registry.names()


def test_register_returns_the_name() -> None:
    class Thing(BaseModel):
        x: int

    name = unique("Registered")
    assert type_registry.register(Thing, name=name) == name
    assert type_registry.resolve(name) is Thing


def test_unknown_name_raises_registry_error() -> None:
    with pytest.raises(RegistryError, match="unknown artifact type"):
        type_registry.resolve(unique("NeverRegistered"))


def test_name_for_an_unregistered_model_raises_registry_error() -> None:
    class NotRegistered(BaseModel):
        x: int

    with pytest.raises(RegistryError):
        type_registry.name_for(NotRegistered)
    with pytest.raises(RegistryError):
        type_registry.name_for(NotRegistered(x=1))


def test_two_different_models_under_one_name_raise() -> None:
    name = unique("Clash")

    class First(BaseModel):
        a: int

    class Second(BaseModel):
        b: str

    type_registry.register(First, name=name)
    with pytest.raises(RegistryError, match="already registered"):
        type_registry.register(Second, name=name)
    # the first registration is untouched
    assert type_registry.resolve(name) is First
    with pytest.raises(RegistryError):
        type_registry.name_for(Second)


def _defined_twice(name: str, second_field: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """Two classes with the same module and qualified name, as a module loaded twice makes."""

    def define(field: str) -> type[BaseModel]:
        class Model(BaseModel):
            __annotations__ = {field: int}

        return Model

    return define("x"), define(second_field)


def test_a_module_loaded_again_replaces_its_own_model() -> None:
    name = unique("Reloaded")
    old, new = _defined_twice(name, "x")
    assert old.__qualname__ == new.__qualname__ and old is not new
    type_registry.register(old, name=name)
    type_registry.register(new, name=name)
    assert type_registry.resolve(name) is new


def test_a_different_model_of_the_same_qualified_name_raises() -> None:
    name = unique("Redefined")
    old, new = _defined_twice(name, "y")
    type_registry.register(old, name=name)
    with pytest.raises(RegistryError, match=r"another definition of .* fields differ"):
        type_registry.register(new, name=name)
    assert type_registry.resolve(name) is old


def test_decorator_clash_raises_too() -> None:
    name = unique("DecoClash")

    @flock_type(name=name)
    class First(BaseModel):
        a: int

    with pytest.raises(RegistryError):

        @flock_type(name=name)
        class Second(BaseModel):
            b: str

    assert type_registry.resolve(name) is First


def test_re_registering_the_same_model_is_fine() -> None:
    name = unique("Again")

    class Thing(BaseModel):
        x: int

    assert type_registry.register(Thing, name=name) == name
    assert type_registry.register(Thing, name=name) == name
    assert flock_type(name=name)(Thing) is Thing
    assert type_registry.resolve(name) is Thing
    assert type_registry.name_for(Thing) == name


def test_one_model_cannot_take_a_second_name() -> None:
    class Thing(BaseModel):
        x: int

    first, second = unique("One"), unique("Two")
    type_registry.register(Thing, name=first)
    with pytest.raises(RegistryError):
        type_registry.register(Thing, name=second)
    assert not type_registry.is_registered(second)


def test_only_pydantic_models_can_be_registered() -> None:
    class Plain:
        pass

    with pytest.raises(TypeError):
        type_registry.register(Plain, name=unique("Plain"))  # type: ignore[arg-type]


def test_empty_name_is_rejected() -> None:
    class Thing(BaseModel):
        x: int

    with pytest.raises(RegistryError):
        type_registry.register(Thing, name="   ")
