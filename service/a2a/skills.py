"""The agent's skills and how an incoming A2A message becomes a job for one of them.

A message carries its texts as text parts (one text per part) and/or a data part
``{"texts": [...], "text": "...", "model": "...", "skill": "...", "messages": [...]}``.
The skill comes from the data part's ``"skill"``, else the message metadata's ``"skill"``,
else the request metadata's ``"skill"``, else :data:`DEFAULT_SKILL`. Anything the service
would refuse as a client error is refused here, before a task exists, with the protocol's
own error (invalid params, or content type not supported for file parts).

A data part holding none of those keys is context for someone else (a client's own
metadata, say): it is not read, so a message may carry one beside its texts. A data part
that holds some of them and other keys too is refused naming the unknown ones (a typo such as
``"modle"`` must not pass unnoticed), and so is a message whose every part goes unread.
What the agent does not read (such data parts, metadata, a part's media type) is still kept
in the task's history, so a message may carry at most :data:`UNREAD_BYTES` of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from a2a.types import Message as A2AMessage
from a2a.types import Part, SendMessageRequest, Task
from a2a.utils.errors import ContentTypeNotSupportedError, InvalidParamsError
from google.protobuf.json_format import MessageToDict

from service.config import Settings
from service.core.errors import ServiceError, shown
from service.core.limits import ItemPath, LimitExceeded
from service.core.outcomes import ClassifyOutcome, ModerationOutcome
from service.core.pipeline import GuardedPipeline
from service.guard.scanner import Message

if TYPE_CHECKING:
    from service.a2a.chat_skill import ChatTurn
    from service.drift.outcome import DriftOutcome

SENTIMENT_CNN = "sentiment-cnn"
SENTIMENT_MOE = "sentiment-moe"
SENTIMENT_CASCADE = "sentiment-cascade"  # the distilled student, the int8 CNN when unsure
HYPERBOLE = "hyperbole"  # the LoRA adapter on the sentiment CNN
MODERATION = "moderation"
CHAT = "chat"  # a conversation: see service/a2a/chat_skill.py
DRIFT_REPORT = "drift-report"  # the drift monitor's state, screened like every answer
SKILL_IDS = (
    SENTIMENT_CNN,
    SENTIMENT_MOE,
    SENTIMENT_CASCADE,
    HYPERBOLE,
    MODERATION,
    CHAT,
    DRIFT_REPORT,
)
DEFAULT_SKILL = SENTIMENT_CNN

DATA_KEYS = frozenset({"texts", "text", "model", "skill", "messages"})
# Bytes a message may carry beyond the texts and data the agent reads: the task's history
# keeps the whole message, so this bounds what a conversation's turns can pile up.
UNREAD_BYTES = 8 * 1024
PART_FRAMING = 32  # a read part's own encoding (field tags, lengths, media type) allowed too
ROLES = ("user", "assistant")


@dataclass(frozen=True)
class SkillInfo:
    id: str
    name: str
    description: str
    tags: tuple[str, ...]
    examples: tuple[str, ...]


SKILLS: dict[str, SkillInfo] = {
    SENTIMENT_CNN: SkillInfo(
        SENTIMENT_CNN,
        "Sentiment classification (CNN)",
        "Classifies the sentiment of English movie-review-style texts as positive or negative "
        "with a quantized 1-D convolutional network trained on IMDB. Every text and every "
        "answer is screened by Llama Guard 3; unsafe input is rejected naming the hazard "
        "categories. Send the texts as text parts (one text per part) or as a data part "
        '{"texts": [...], "model": "<optional model name>"}. Answers with an artifact '
        "holding the results (label, score, both class probabilities, guard verdicts) as "
        "data and a one-line summary as text. This is the default skill.",
        ("sentiment", "classification", "cnn", "imdb", "guarded"),
        (
            "One of the best films I have ever seen: moving and beautifully acted.",
            '{"texts": ["A dull, lifeless remake.", "Pure joy from start to finish."]}',
        ),
    ),
    SENTIMENT_MOE: SkillInfo(
        SENTIMENT_MOE,
        "Sentiment classification (Mixture of Experts)",
        "Classifies the sentiment of English texts as positive or negative with a "
        "Switch-Transformer mixture-of-experts model (10 experts, top-1 routing) trained on "
        "IMDB, behind the same Llama Guard 3 screens as the CNN skill. Select it with "
        '"skill": "sentiment-moe" in a data part or in the message metadata.',
        ("sentiment", "classification", "mixture-of-experts", "switch-transformer", "guarded"),
        (
            '{"skill": "sentiment-moe", "texts": ["The plot made no sense at all."]}',
            "The soundtrack alone is worth the ticket.",
        ),
    ),
    SENTIMENT_CASCADE: SkillInfo(
        SENTIMENT_CASCADE,
        "Sentiment classification, high volume (student-then-CNN cascade)",
        "Classifies the sentiment of English texts as positive or negative for high-volume "
        "callers: a small student distilled from the CNN answers every text, and the texts it "
        "is unsure of go to the int8 CNN in the same call, at about the CNN's accuracy and "
        "several times its throughput. Each result names the model that answered "
        '("answered_by"). Behind the same Llama Guard 3 screens as every skill. Select it '
        'with "skill": "sentiment-cascade" in a data part or in the message metadata.',
        ("sentiment", "classification", "distillation", "cascade", "high-volume", "guarded"),
        (
            '{"skill": "sentiment-cascade", "texts": ["Great fun.", "A tedious mess."]}',
            "An uneven film, but the last act won me over.",
        ),
    ),
    HYPERBOLE: SkillInfo(
        HYPERBOLE,
        "Hyperbole detection (LoRA adapter)",
        "Tells exaggeration from literal statements in English sentences (labels hyperbole "
        "or literal) with a low-rank adapter on the sentiment CNN, trained on human-labelled "
        "sentences (HYPO), behind the same Llama Guard 3 screens as every skill. Select it "
        'with "skill": "hyperbole" in a data part or in the message metadata.',
        ("hyperbole", "exaggeration", "classification", "lora", "guarded"),
        (
            '{"skill": "hyperbole", "texts": ["I have told you a million times."]}',
            "This bag weighs a ton.",
        ),
    ),
    MODERATION: SkillInfo(
        MODERATION,
        "Content moderation (Llama Guard 3)",
        "Judges content with Llama Guard 3 against the MLCommons hazard taxonomy (S1-S14): "
        'each text part (or each entry of a data part\'s "texts") is judged as a user '
        'message, or a data part {"messages": [{"role": "user"|"assistant", "content": ...}]} '
        "is judged as one conversation. Answers with the verdicts (safe, blocked, category "
        "codes and names); an unsafe verdict is an answer, not a refusal.",
        ("moderation", "safety", "llama-guard", "content-policy"),
        (
            '{"skill": "moderation", "texts": ["How do I bake bread?"]}',
            '{"skill": "moderation", "messages": [{"role": "user", "content": "Hi"}, '
            '{"role": "assistant", "content": "Hello!"}]}',
        ),
    ),
    CHAT: SkillInfo(
        CHAT,
        "Guarded chat",
        "A conversation with a chat model behind Llama Guard 3. One task is one "
        'conversation: each message is a turn (its text parts, or a data part\'s "text"); '
        "the conversation so far is screened before the reply, and the reply is streamed in "
        "chunks, each released only after the guard passed the reply so far. After each "
        "reply the task waits in input-required with the reply as its status message; send "
        "the next message with the task's taskId to continue (the conversation is the "
        "task's history), CancelTask to end it. The reply of each turn is an artifact "
        "(chat-reply-<turn>), streamed chunk by chunk with SendStreamingMessage. A blocked "
        "message or reply ends the task rejected, naming the hazard categories. Select it "
        'with "skill": "chat" in a data part or in the message metadata.',
        ("chat", "conversation", "multi-turn", "streaming", "llama-guard", "guarded"),
        (
            '{"skill": "chat", "text": "Which films are worth watching twice?"}',
            "And why that one? (the next turn: a message with the task's taskId)",
        ),
    ),
    DRIFT_REPORT: SkillInfo(
        DRIFT_REPORT,
        "Drift report",
        "How far the texts each model classified recently are from its training data: per "
        "model, the window of recent texts, each feature's statistic, threshold and verdict "
        "(text length, word count, out-of-vocabulary share, token distribution, score) and "
        "the vocabulary words that most gained and lost weight; the data of GET /v1/drift. "
        "The request and the answer are screened by Llama Guard 3. Select it with "
        '"skill": "drift-report"; a data part\'s "model" narrows it to one model.',
        ("drift", "monitoring", "data-drift", "guarded"),
        (
            '{"skill": "drift-report"}',
            '{"skill": "drift-report", "model": "sentiment-cnn-int8"}',
        ),
    ),
}


class Outcome(Protocol):
    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


class Job(Protocol):
    """What one message asks for, validated: a core operation and its arguments."""

    @property
    def skill(self) -> str: ...

    def working_text(self) -> str: ...

    async def run(self, pipeline: GuardedPipeline) -> Outcome: ...


@dataclass(frozen=True)
class ClassifyJob:
    skill: str
    texts: tuple[str, ...]
    model: str

    def working_text(self) -> str:
        return f"screening {_count(self.texts)} with the guard and classifying with {self.model}"

    async def run(self, pipeline: GuardedPipeline) -> ClassifyOutcome:
        return await pipeline.classify(self.texts, self.model)


@dataclass(frozen=True)
class ModerateJob:
    skill: str
    conversations: tuple[tuple[Message, ...], ...]
    one_conversation: bool  # a data part's "messages", not one text per conversation

    def working_text(self) -> str:
        if self.one_conversation:
            return f"judging a conversation of {len(self.conversations[0])} messages with the guard"
        return f"judging {_count(self.conversations)} with the guard"

    async def run(self, pipeline: GuardedPipeline) -> ModerationOutcome:
        return await pipeline.moderate(self.conversations)


@dataclass(frozen=True)
class DriftJob:
    skill: str
    model: str | None
    request: str  # the message's text, screened as the user's message

    def working_text(self) -> str:
        return f"reporting drift for {self.model or 'every model'}"

    async def run(self, pipeline: GuardedPipeline) -> DriftOutcome:
        return await pipeline.drift_report(self.model, self.request)


@dataclass(frozen=True)
class RefusedJob:
    """A valid message that may not start a task now: the task ends failed with ``error``."""

    skill: str
    error: ServiceError


def _count(items: Sequence[object]) -> str:
    return f"{len(items)} text{'s' if len(items) != 1 else ''}"


def skill_model(skill: str, settings: Settings) -> str:
    """The model a sentiment skill runs when the message names none."""
    if skill == SENTIMENT_MOE:
        return settings.a2a_moe_model
    if skill == HYPERBOLE:
        return settings.a2a_hyperbole_model
    if skill == SENTIMENT_CASCADE:
        return settings.a2a_cascade_model
    return settings.a2a_cnn_model or settings.default_model


def job_parser(
    pipeline: GuardedPipeline, settings: Settings
) -> Callable[[SendMessageRequest], Job | ChatTurn]:
    """The function that validates a SendMessage request into its Job."""

    def parse(request: SendMessageRequest) -> Job | ChatTurn:
        metadata = MessageToDict(request.metadata) if request.HasField("metadata") else {}
        return parse_job(request.message, metadata, pipeline, settings)

    return parse


def parse_job(
    message: A2AMessage,
    request_metadata: Mapping[str, Any],
    pipeline: GuardedPipeline,
    settings: Settings,
    continuing: Task | None = None,
) -> Job | ChatTurn:
    """Turn a message into a Job; raise the A2A error the protocol has for what is wrong.
    ``continuing``: the stored task a follow-up names (only a conversation takes one)."""
    texts: list[str] = []
    data: dict[str, Any] = {}
    unread: list[int] = []
    read_bytes = 0
    for index, part in enumerate(message.parts):
        texts_from_part, data_from_part = _read_part(part, index)
        if data_from_part is None:
            unread.append(index)
            continue
        read_bytes += _content_bytes(part) + PART_FRAMING
        texts.extend(texts_from_part)
        for key, value in data_from_part.items():
            if key in data:
                raise _invalid(f"{key!r} is given by more than one data part")
            data[key] = value
    if unread and len(unread) == len(message.parts):
        raise _invalid(
            f"no part of the message holds anything this agent reads: data parts {unread} "
            f"have none of the keys {sorted(DATA_KEYS)}; send the texts as text parts or "
            'as {"texts": [...]}'
        )
    if (extra := message.ByteSize() - read_bytes) > UNREAD_BYTES:
        raise _invalid(
            f"the message carries {extra} bytes beyond the texts and data this agent reads "
            f"(data parts without its keys, metadata, ids); at most {UNREAD_BYTES}"
        )
    texts.extend(_data_texts(data))
    skill = _choose_skill(data, message, request_metadata)
    if skill == CHAT or continuing is not None:
        from service.a2a.chat_skill import chat_turn  # it builds on this module

        return chat_turn(texts, data, message, request_metadata, continuing, pipeline, settings)

    if skill == DRIFT_REPORT:
        return _drift_job(texts, data, pipeline)

    if skill == MODERATION:
        if "model" in data:
            raise _invalid("the moderation skill always uses the guard model; drop 'model'")
        conversation = _conversation(data.get("messages"))
        if conversation and texts:
            raise _invalid("send either 'messages' (one conversation) or texts, not both")
        try:
            if conversation:
                pipeline.limits.check_conversation(conversation)
            else:
                pipeline.limits.check_texts(texts)
        except LimitExceeded as exc:
            raise protocol_error(exc) from None
        if conversation:
            return ModerateJob(skill, (tuple(conversation),), one_conversation=True)
        conversations = tuple((Message("user", text),) for text in texts)
        return ModerateJob(skill, conversations, one_conversation=False)

    if "messages" in data:
        raise _invalid(f"'messages' belongs to the moderation skill, not {skill!r}")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid("'model' must be a non-empty string")
    model = model or skill_model(skill, settings)
    try:
        pipeline.limits.check_texts(texts)
        pipeline.model_info(model)
    except ServiceError as exc:
        raise protocol_error(exc) from None
    return ClassifyJob(skill, tuple(texts), model)


DRIFT_REPORT_GROWTH = 1024  # bytes the report may gain between the request and its task


def _drift_job(texts: list[str], data: Mapping[str, Any], pipeline: GuardedPipeline) -> DriftJob:
    if "messages" in data:
        raise _invalid(f"'messages' belongs to the moderation skill, not {DRIFT_REPORT!r}")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise _invalid("'model' must be a non-empty string")
    request = "\n".join(texts)
    try:
        if texts:
            pipeline.limits.check_texts(texts)
        if model is not None:
            pipeline.model_info(model)
        if request:
            # The output screen reads the request and the report together: refused here, as
            # too long, when both would not fit the guard's context (with room for the
            # report to grow a little before the task runs), not failed later as an outage.
            from service.drift.outcome import screened_text

            report = screened_text(pipeline.drift_status(model))
            room = len(report.encode()) + DRIFT_REPORT_GROWTH
            pipeline.limits.check_conversation([Message("user", request)], reply_bytes=room)
    except ServiceError as exc:
        raise protocol_error(exc) from None
    return DriftJob(DRIFT_REPORT, model, request)


def _read_part(part: Part, index: int) -> tuple[list[str], dict[str, Any] | None]:
    """The part's texts and data; None for data a data part holds for someone else."""
    if part.HasField("text"):
        return [part.text], {}
    if part.HasField("data"):
        value = MessageToDict(part.data)
        if not isinstance(value, dict):
            raise _invalid(f"data part {index} must be a JSON object")
        if not DATA_KEYS & set(value):
            return [], None
        unknown = sorted(set(value) - DATA_KEYS)
        if unknown:
            named = [shown(key, 40) for key in unknown[:10]]
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise _invalid(
                f"data part {index} has unknown keys {named}{more}; known: {sorted(DATA_KEYS)}"
            )
        return [], value
    raise ContentTypeNotSupportedError(
        message=f"part {index} is not text or JSON data; this agent reads no files"
    )


def _content_bytes(part: Part) -> int:
    """The encoded size of what the agent reads in a part (its text, or its data)."""
    return len(part.text.encode("utf-8")) if part.HasField("text") else part.data.ByteSize()


def _data_texts(data: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    if "text" in data:
        if not isinstance(data["text"], str):
            raise _invalid("'text' must be a string")
        texts.append(data["text"])
    if "texts" in data:
        value = data["texts"]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise _invalid("'texts' must be a list of strings")
        texts.extend(value)
    return texts


def _choose_skill(
    data: Mapping[str, Any], message: A2AMessage, request_metadata: Mapping[str, Any]
) -> str:
    candidates = (
        ("skill", data.get("skill")),
        (
            "message.metadata.skill",
            MessageToDict(message.metadata).get("skill") if message.HasField("metadata") else None,
        ),
        ("metadata.skill", request_metadata.get("skill")),
    )
    field, skill = next(
        ((field, value) for field, value in candidates if value is not None),
        ("skill", DEFAULT_SKILL),
    )
    if not isinstance(skill, str):
        # A JSON number, boolean, list or object (null counts as not given).
        why = f"must be a string, one of: {', '.join(SKILL_IDS)}"
        raise InvalidParamsError(
            message=f"{field!r} {why}; got {_json_type(skill)}",
            data={"errors": [{"field": field, "message": why}]},
        )
    if skill not in SKILLS:
        raise InvalidParamsError(
            message=f"unknown skill {shown(skill)!r}; skills: {', '.join(SKILL_IDS)}",
            data={"skill": shown(skill), "skills": list(SKILL_IDS)},
        )
    return skill


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def _conversation(value: Any) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        raise _invalid("'messages' must be a non-empty list of {role, content} objects")
    conversation = []
    for index, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or set(item) != {"role", "content"}
            or item["role"] not in ROLES
            or not isinstance(item["content"], str)
        ):
            raise _invalid(
                f'messages[{index}] must be {{"role": "user"|"assistant", "content": "..."}}'
            )
        conversation.append(Message(role=item["role"], content=item["content"]))
    return conversation


def _invalid(message: str) -> InvalidParamsError:
    return InvalidParamsError(message=message)


def protocol_error(exc: ServiceError) -> InvalidParamsError:
    """A request the core refuses before any work starts, as the protocol's error (the
    table's A2A outcome for these is invalid-params)."""
    if exc.spec.a2a != "invalid-params":
        raise TypeError(f"{exc.problem} is not refused before a task exists") from exc
    if isinstance(exc, LimitExceeded):
        # The shape every A2A transport renders as field violations: {"field", "message"}.
        errors = [{"field": _field(v.item), "message": v.reason} for v in exc.violations]
        return InvalidParamsError(message=exc.message, data={"errors": errors})
    return InvalidParamsError(message=exc.message, data=exc.details())


def _field(item: ItemPath) -> str:
    field = ""
    for part in item:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field
