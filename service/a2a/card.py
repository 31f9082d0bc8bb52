"""The agent card: who the agent is, its skills, where it answers and how to authenticate.

Every URL comes from ``settings.base_url`` (PUBLIC_URL when set), so the card stays right
behind a proxy or inside docker compose. The public card never names a model's details;
the authenticated extended card (offered only when API_TOKENS is set) adds the model cards
(accuracy, size, quantization) and the guard policy, and never any secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Struct

from service.a2a.skills import CHAT, DRIFT_REPORT, MODERATION, SKILLS, skill_model
from service.config import Settings
from service.models.registry import ModelInfo

JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
CARD_PATH = "/.well-known/agent-card.json"
BEARER_SCHEME = "bearer"
MODEL_CARDS_EXTENSION = "urn:guarded-inference-service:a2a:model-cards:v1"

INPUT_MODES = ["text/plain", "application/json"]
OUTPUT_MODES = ["application/json", "text/plain"]
CHAT_OUTPUT_MODES = ["text/plain"]  # the reply: text parts

DESCRIPTION = (
    "Sentiment classification of English texts (a quantized CNN and a Switch-Transformer "
    "mixture-of-experts model, both trained on IMDB reviews), content moderation, and a "
    "multi-turn chat whose replies stream chunk by chunk. Every "
    "text and every answer passes Llama Guard 3: unsafe input is rejected naming the hazard "
    "categories, and when the guard cannot answer the task fails rather than answering "
    "unscreened."
)


def interfaces(base_url: str) -> list[AgentInterface]:
    """JSON-RPC and HTTP+JSON, each at protocol 1.0 and 0.3 (one endpoint serves both;
    the A2A-Version header picks the protocol). 1.0 first: clients take the first match."""
    bindings = (
        (base_url + JSONRPC_PATH, TransportProtocol.JSONRPC),
        (base_url + REST_PATH, TransportProtocol.HTTP_JSON),
    )
    return [
        AgentInterface(url=url, protocol_binding=binding, protocol_version=version)
        for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        for url, binding in bindings
    ]


def _skill(skill_id: str, extra: str = "") -> AgentSkill:
    info = SKILLS[skill_id]
    return AgentSkill(
        id=info.id,
        name=info.name,
        description=info.description + extra,
        tags=list(info.tags),
        examples=list(info.examples),
        input_modes=INPUT_MODES,
        output_modes=CHAT_OUTPUT_MODES if skill_id == CHAT else OUTPUT_MODES,
    )


def offered(settings: Settings) -> list[str]:
    """The skills this agent offers: all, but chat only while CHAT_MODEL names a model."""
    return [skill_id for skill_id in SKILLS if skill_id != CHAT or settings.chat_model]


def public_card(settings: Settings, version: str) -> AgentCard:
    """The card served at /.well-known/agent-card.json."""
    base = settings.base_url
    card = AgentCard(
        name=settings.agent_name,
        description=DESCRIPTION,
        version=version,
        provider=AgentProvider(
            organization=settings.agent_provider, url=settings.agent_provider_url or base
        ),
        documentation_url=base + "/docs",
        supported_interfaces=interfaces(base),
        capabilities=AgentCapabilities(
            streaming=True,
            # On when A2A_PUSH_ALLOWED_HOSTS names a webhook host (service.a2a.push).
            push_notifications=bool(settings.a2a_push_allowed_hosts),
            extended_agent_card=bool(settings.api_tokens),
        ),
        default_input_modes=INPUT_MODES,
        default_output_modes=OUTPUT_MODES,
        skills=[_skill(skill_id) for skill_id in offered(settings)],
    )
    if settings.api_tokens:
        # The card says exactly what the endpoints enforce: every A2A call needs the token.
        card.security_schemes[BEARER_SCHEME].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    description="Send 'Authorization: Bearer <token>' with one of the "
                    "service's API tokens on every A2A call.",
                )
            )
        )
        requirement = SecurityRequirement()
        requirement.schemes[BEARER_SCHEME].CopyFrom(StringList())
        card.security_requirements.append(requirement)
    return card


def model_card(info: ModelInfo, default: bool) -> dict[str, Any]:
    """What the extended card tells about one model (its card, minus training internals)."""
    return {**info.to_dict(), "default": default}


def extended_card(
    public: AgentCard, settings: Settings, models: Sequence[ModelInfo], default_model: str
) -> AgentCard:
    """The public card plus the model cards and the guard policy (no secrets)."""
    card = AgentCard()
    card.CopyFrom(public)
    by_name = {info.name: info for info in models}
    del card.skills[:]
    for skill_id in offered(settings):
        if skill_id == MODERATION:
            extra = f" Guard model: {settings.guard_model}."
        elif skill_id == DRIFT_REPORT:
            extra = f" Models: {', '.join(info.name for info in models)}."
        elif skill_id == CHAT:
            extra = f" Chat model: {settings.chat_model}; guard model: {settings.guard_model}."
        else:
            name = skill_model(skill_id, settings)
            info = by_name.get(name)
            extra = f" Default model: {_describe(info) if info else name + ' (not loaded)'}."
        card.skills.append(_skill(skill_id, extra))
    params = Struct()
    ParseDict(
        {
            "models": [model_card(info, info.name == default_model) for info in models],
            "skill_models": {
                skill_id: skill_model(skill_id, settings)
                for skill_id in SKILLS
                if skill_id not in (MODERATION, CHAT, DRIFT_REPORT)
            },
            "guard": {
                "model": settings.guard_model,
                "screen_input": settings.guard_screen_input,
                "screen_output": settings.guard_screen_output,
                "block_categories": settings.guard_block_categories or "all",
                "fail_closed": True,
            },
            "limits": {
                "max_batch": settings.max_batch,
                "max_text_chars": settings.max_text_chars,
                "request_timeout_s": settings.request_timeout,
                "chat_max_messages": settings.chat_max_messages,
                "chat_max_tokens": settings.chat_max_tokens,
            },
        },
        params,
    )
    card.capabilities.extensions.append(
        AgentExtension(
            uri=MODEL_CARDS_EXTENSION,
            description="Model cards of the served classifiers (architecture, parameters, "
            "quantization, size on disk, test accuracy) and the guard policy.",
            required=False,
            params=params,
        )
    )
    return card


def _describe(info: ModelInfo) -> str:
    if info.base is not None and info.adapter is not None:  # a LoRA adapter
        parts = [
            f"LoRA rank {info.adapter['rank']} on {info.base}",
            f"{info.params / 1e3:.1f} K trained parameters",
            f"{info.size_bytes / 1e3:.0f} KB",
        ]
        if info.test_accuracy is not None:
            parts.append(f"held-out test accuracy {info.test_accuracy:.3f}")
        return f"{info.name} ({', '.join(parts)})"
    parts = [
        info.architecture,
        info.quantization or "fp32",
        f"{info.params / 1e6:.1f} M parameters",
        f"{info.size_bytes / 1e6:.1f} MB",
    ]
    if info.test_accuracy is not None:
        parts.append(f"IMDB test accuracy {info.test_accuracy:.3f}")
    return f"{info.name} ({', '.join(parts)})"
