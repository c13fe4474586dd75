"""Flock: typed agents on a blackboard, behind a REST API with sync publish and safe retries."""

from flock.core.agent import Agent, AgentBuilder, AgentConfigError, AgentOutputError, RunContext
from flock.core.artifacts import AgentError, Artifact, ArtifactEnvelope, ConsumptionRecord
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

__all__ = [
    "Agent",
    "AgentBuilder",
    "AgentConfigError",
    "AgentError",
    "AgentOutputError",
    "Artifact",
    "ArtifactEnvelope",
    "ConsumptionRecord",
    "CorrelationStatus",
    "FilterConfig",
    "Flock",
    "FlockStats",
    "Identity",
    "LabelledVisibility",
    "PrivateVisibility",
    "PublicVisibility",
    "RegistryError",
    "RunContext",
    "TenantVisibility",
    "flock_type",
    "type_registry",
]
