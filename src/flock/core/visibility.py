"""Who may see an artifact: visibility rules checked against an identity."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is looking: an agent, or an API caller (principal), with labels and a tenant."""

    name: str | None = None
    labels: frozenset[str] = field(default_factory=frozenset)
    tenant: str | None = None


ANONYMOUS = Identity()


def _kind_required(schema: dict[str, Any]) -> None:
    # `kind` has a default in Python, but in JSON it picks the rule: documented as required.
    required = schema.setdefault("required", [])
    if "kind" not in required:
        required.insert(0, "kind")


# The API's limits, documented in the schema only: stored rules are read back as they are.
_Member = Annotated[
    str,
    Field(
        json_schema_extra={"minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}
    ),
]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_kind_required)


class PublicVisibility(_Rule):
    """Everyone sees it."""

    kind: Literal["Public"] = "Public"

    def allows(self, identity: Identity) -> bool:
        return True


class PrivateVisibility(_Rule):
    """Only the named agents (or API principals) see it."""

    kind: Literal["Private"] = "Private"
    agents: frozenset[_Member] = frozenset()

    def allows(self, identity: Identity) -> bool:
        return identity.name is not None and identity.name in self.agents


class LabelledVisibility(_Rule):
    """Only identities holding every required label see it."""

    kind: Literal["Labelled"] = "Labelled"
    required_labels: frozenset[_Member] = frozenset()

    def allows(self, identity: Identity) -> bool:
        return self.required_labels <= identity.labels


class TenantVisibility(_Rule):
    """Only identities of the given tenant see it."""

    kind: Literal["Tenant"] = "Tenant"
    tenant_id: _Member

    def allows(self, identity: Identity) -> bool:
        return identity.tenant is not None and identity.tenant == self.tenant_id


Visibility = Annotated[
    PublicVisibility | PrivateVisibility | LabelledVisibility | TenantVisibility,
    Field(discriminator="kind"),
]
AnyVisibility = PublicVisibility | PrivateVisibility | LabelledVisibility | TenantVisibility

PUBLIC = PublicVisibility()
_adapter: TypeAdapter[AnyVisibility] = TypeAdapter(Visibility)


def visibility_from_dict(data: dict[str, Any]) -> AnyVisibility:
    """Parse `{"kind": ..., ...}` back into a visibility rule (raises pydantic.ValidationError)."""
    if data.get("kind") == "Public":
        return PUBLIC
    return _adapter.validate_python(data)


def visibility_to_dict(visibility: AnyVisibility) -> dict[str, Any]:
    if visibility is PUBLIC:
        return {"kind": "Public"}
    data = visibility.model_dump(mode="json")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = sorted(value)
    return data


# -- tenancy ---------------------------------------------------------------------------------
#
# A tenant's data stays the tenant's through a whole cascade: an agent without `tenant(...)`
# is shared and serves every tenant, so Tenant visibility does not hide an artifact from it;
# what it publishes from a tenant's input is scoped to that tenant again. Private and
# Labelled rules name principals and labels, which are not unique across tenants, so they
# cannot carry a tenant's data: a tenant-scoped run that declares one fails instead.


class VisibilityError(PermissionError):
    """An identity reached for an artifact it may not see (answered 403 over HTTP)."""


class TenantScopeError(VisibilityError):
    """An artifact would leave its tenant's scope (answered 403 over HTTP)."""


class _HasVisibility(Protocol):
    @property
    def visibility(self) -> AnyVisibility: ...


def tenant_of(visibility: AnyVisibility) -> str | None:
    """The tenant an artifact of this visibility belongs to, or None when it is not scoped."""
    return visibility.tenant_id if isinstance(visibility, TenantVisibility) else None


def may_consume(agent: Identity, visibility: AnyVisibility) -> bool:
    """Whether an agent may consume an artifact of this visibility.

    A shared agent (no tenant) serves every tenant: Tenant visibility restricts callers and
    tenant-bound agents, not it. Every other rule applies to agents as to callers.
    """
    if agent.tenant is None and isinstance(visibility, TenantVisibility):
        return True
    return visibility.allows(agent)


def require_consumable(agent: Identity, inputs: Iterable[_HasVisibility]) -> None:
    """Raise `VisibilityError` unless the agent may consume every input (direct runs)."""
    for item in inputs:
        if not may_consume(agent, item.visibility):
            tenant = tenant_of(item.visibility)
            whose = f" of tenant {tenant!r}" if tenant is not None else ""
            raise VisibilityError(
                f"agent {agent.name!r} may not see an input{whose} "
                f"({item.visibility.kind} visibility)"
            )


def inherit_visibility(declared: AnyVisibility, inputs: Iterable[_HasVisibility]) -> AnyVisibility:
    """The visibility of a run's output: the tenant scope of its inputs, narrowed as declared.

    Inputs of no tenant leave the declared rule as it is. Inputs of tenant T turn a Public
    declaration into `Tenant(T)` and keep `Tenant(T)`; any other declaration would let the
    output leave T, so `TenantScopeError` is raised (the run fails with that message).
    """
    tenants = sorted({t for t in (tenant_of(i.visibility) for i in inputs) if t is not None})
    if not tenants:
        return declared
    if len(tenants) > 1:
        raise TenantScopeError(
            f"the run's inputs belong to several tenants ({', '.join(map(repr, tenants))}); "
            "its outputs cannot be scoped to one"
        )
    (tenant,) = tenants
    if isinstance(declared, PublicVisibility):
        return TenantVisibility(tenant_id=tenant)
    if isinstance(declared, TenantVisibility) and declared.tenant_id == tenant:
        return declared
    return _refuse(declared, tenant, "its input belongs to")


def caller_visibility(requested: AnyVisibility | None, tenant: str | None) -> AnyVisibility:
    """The visibility of an artifact a caller publishes.

    A caller without a tenant gets what it asks for (Public by default). A tenant's caller
    publishes `Tenant(own)` by default and may name only that; anything wider or of another
    tenant raises `TenantScopeError`.
    """
    if tenant is None:
        return requested or PUBLIC
    if requested is None:
        return TenantVisibility(tenant_id=tenant)
    if isinstance(requested, TenantVisibility) and requested.tenant_id == tenant:
        return requested
    return _refuse(requested, tenant, "the caller belongs to")


def _refuse(visibility: AnyVisibility, tenant: str, whose: str) -> AnyVisibility:
    if isinstance(visibility, TenantVisibility):
        raise TenantScopeError(
            f"visibility Tenant({visibility.tenant_id!r}) names another tenant; "
            f"{whose} tenant {tenant!r}"
        )
    raise TenantScopeError(
        f"{visibility.kind} visibility would let the artifact leave tenant {tenant!r} "
        f"({whose} it); use Tenant visibility of that tenant"
    )


__all__ = [
    "ANONYMOUS",
    "PUBLIC",
    "AnyVisibility",
    "Identity",
    "LabelledVisibility",
    "PrivateVisibility",
    "PublicVisibility",
    "TenantScopeError",
    "TenantVisibility",
    "Visibility",
    "VisibilityError",
    "caller_visibility",
    "inherit_visibility",
    "may_consume",
    "require_consumable",
    "tenant_of",
    "visibility_from_dict",
    "visibility_to_dict",
]
