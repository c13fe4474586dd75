"""Agent routes: list agents, run one directly."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from flock.api.deps import PrincipalDep, ServiceDep
from flock.api.errors import APIError, ErrorCode
from flock.api.models import AgentListResponse, AgentRunRequest, AgentRunResponse, PublishRequest
from flock.api.publishing import build_artifact
from flock.api.routes.artifacts import json_response
from flock.api.validation import Name
from flock.core.artifacts import AgentError
from flock.core.failures import describe_failure
from flock.core.visibility import VisibilityError

logger = logging.getLogger("flock.api")
router = APIRouter(prefix="/api/v1", tags=["agents"])


@router.get(
    "/agents", operation_id="listAgents", response_model=AgentListResponse, summary="List agents"
)
async def list_agents(
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    # A tenant's caller sees the shared agents and its own tenant's, not another tenant's.
    tenant = principal.tenant
    agents = [a for a in service.flock.agents if a.tenant is None or tenant in (None, a.tenant)]
    open_groups = await service.flock.store.open_groups()
    return json_response(
        {"agents": [{**a.describe(), "open_groups": open_groups.get(a.name, 0)} for a in agents]}
    )


@router.post(
    "/agents/{name}/run",
    operation_id="runAgent",
    response_model=AgentRunResponse,
    summary="Run one agent",
)
async def run_agent(
    name: Name,
    body: AgentRunRequest,
    principal: PrincipalDep,
    service: ServiceDep,
) -> Response:
    """Run the agent once on the inputs; its outputs are stored, no other agent is triggered."""
    try:
        agent = service.flock.get_agent(name)
    except KeyError:
        raise APIError(ErrorCode.NOT_FOUND, f"no agent named {name!r}") from None
    # The inputs are the caller's, scoped as its publishes are; the outputs inherit that.
    visibility = principal.visibility_for(None)
    inputs = [
        build_artifact(
            PublishRequest(type=i.type, payload=i.payload, visibility=visibility),
            principal,
            field_prefix=f"inputs[{n}].",
        )
        for n, i in enumerate(body.inputs)
    ]
    # An input of a type the agent does not consume would reach its engine as a model it
    # was never written for (a crash, answered 500): that is the caller's mistake.
    consumed = {t for sub in agent.subscriptions for t in sub.type_names}
    strangers = [
        {
            "field": f"inputs[{n}].type",
            "message": f"agent {name!r} does not consume {artifact.type!r}",
            "code": "not_consumed",
        }
        for n, artifact in enumerate(inputs)
        if artifact.type not in consumed
    ]
    if strangers:
        raise APIError(
            ErrorCode.VALIDATION_ERROR,
            f"agent {name!r} consumes only {sorted(consumed)}",
            details=strangers,
        )
    if not agent.fits(inputs):
        gates = [" + ".join(sub.types) for sub in agent.subscriptions if len(sub.types) > 1]
        raise APIError(
            ErrorCode.VALIDATION_ERROR,
            f"agent {name!r} runs on one of its types at a time or on all of an AND gate's "
            f"inputs together ({'; '.join(gates)}); these inputs fit neither",
            details=[
                {"field": "inputs", "message": "one input of each gate type", "code": "arity"}
            ],
        )
    try:
        outputs = await service.flock.direct_invoke(agent, inputs)
    except VisibilityError:
        raise  # a tenant-bound agent of another tenant: 403, not the agent's failure
    except Exception as exc:  # the agent's failure is the run's result, as in sync publish
        logger.warning("direct run of agent %s failed: %s", name, exc, exc_info=exc)
        error = AgentError(name, inputs[0].id, describe_failure(exc), inputs[0].correlation_id)
        return json_response({"agent": name, "artifacts": [], "errors": [error.to_dict()]})
    visible = [a.to_dict() for a in outputs if a.visibility.allows(principal.identity)]
    return json_response({"agent": name, "artifacts": visible, "errors": []})
