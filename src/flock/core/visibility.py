"""Who may see an artifact: visibility rules checked against an identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is looking: an agent, or an API caller (principal), with labels and a tenant."""

    name: str | None = None
    labels: frozenset[str] = field(default_factory=frozenset)
    tenant: str | None = None


ANONYMOUS = Identity()


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PublicVisibility(_Rule):
    """Everyone sees it."""

    kind: Literal["Public"] = "Public"

    def allows(self, identity: Identity) -> bool:
        return True


class PrivateVisibility(_Rule):
    """Only the named agents (or API principals) see it."""

    kind: Literal["Private"] = "Private"
    agents: frozenset[str] = frozenset()

    def allows(self, identity: Identity) -> bool:
        return identity.name is not None and identity.name in self.agents


class LabelledVisibility(_Rule):
    """Only identities holding every required label see it."""

    kind: Literal["Labelled"] = "Labelled"
    required_labels: frozenset[str] = frozenset()

    def allows(self, identity: Identity) -> bool:
        return self.required_labels <= identity.labels


class TenantVisibility(_Rule):
    """Only identities of the given tenant see it."""

    kind: Literal["Tenant"] = "Tenant"
    tenant_id: str

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


__all__ = [
    "ANONYMOUS",
    "PUBLIC",
    "AnyVisibility",
    "Identity",
    "LabelledVisibility",
    "PrivateVisibility",
    "PublicVisibility",
    "TenantVisibility",
    "Visibility",
    "visibility_from_dict",
    "visibility_to_dict",
]
