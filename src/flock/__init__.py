"""Flock: typed agents on a blackboard, behind a REST API with sync publish and safe retries.

The names below are imported on first use (PEP 562), so a program that only needs a
submodule, such as `flock --help`, does not pay for pydantic and the whole core.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flock.core.agent import (
        Agent,
        AgentBuilder,
        AgentConfigError,
        AgentOutputError,
        RunContext,
    )
    from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
    from flock.core.groups import BatchSpec, JoinSpec
    from flock.core.orchestrator import Flock, FlockStats
    from flock.core.store.protocol import CorrelationStatus, FilterConfig
    from flock.core.visibility import (
        Identity,
        LabelledVisibility,
        PrivateVisibility,
        PublicVisibility,
        TenantVisibility,
    )
    from flock.registry import RegistryError, flock_type, type_registry

__version__ = "0.1.0"

# public name -> the module that defines it (keep in step with the imports above)
_EXPORTS = {
    "Agent": "flock.core.agent",
    "AgentBuilder": "flock.core.agent",
    "AgentConfigError": "flock.core.agent",
    "AgentOutputError": "flock.core.agent",
    "RunContext": "flock.core.agent",
    "AgentError": "flock.core.artifacts",
    "Artifact": "flock.core.artifacts",
    "ArtifactEnvelope": "flock.core.artifacts",
    "ConsumptionRecord": "flock.core.artifacts",
    "BatchSpec": "flock.core.groups",
    "JoinSpec": "flock.core.groups",
    "Flock": "flock.core.orchestrator",
    "FlockStats": "flock.core.orchestrator",
    "FilterConfig": "flock.core.store.protocol",
    "CorrelationStatus": "flock.core.store.protocol",
    "Identity": "flock.core.visibility",
    "LabelledVisibility": "flock.core.visibility",
    "PrivateVisibility": "flock.core.visibility",
    "PublicVisibility": "flock.core.visibility",
    "TenantVisibility": "flock.core.visibility",
    "RegistryError": "flock.registry",
    "flock_type": "flock.registry",
    "type_registry": "flock.registry",
}


def lazy_getattr(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports `exports[name]` (a module path) when
    `name` is first asked for, and keeps the value in `namespace` for later lookups. Here,
    so that a package using it loads no module more than `flock` itself."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Agent",
    "AgentBuilder",
    "AgentConfigError",
    "AgentError",
    "AgentOutputError",
    "Artifact",
    "ArtifactEnvelope",
    "BatchSpec",
    "ConsumptionRecord",
    "CorrelationStatus",
    "FilterConfig",
    "Flock",
    "FlockStats",
    "Identity",
    "JoinSpec",
    "LabelledVisibility",
    "PrivateVisibility",
    "PublicVisibility",
    "RegistryError",
    "RunContext",
    "TenantVisibility",
    "flock_type",
    "type_registry",
]
