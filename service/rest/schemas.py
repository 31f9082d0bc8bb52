"""Request and response bodies of the REST API (they also document it in OpenAPI).

Answers are built as plain dicts by the routes (no response re-validation on the hot path);
the response models here describe them for /openapi.json and /docs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClassifyRequest(BaseModel):
    """Exactly one of ``text`` or ``texts``; ``model`` defaults to the service's default."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "A moving, beautifully shot film."},
                {"texts": ["Loved it.", "Two hours I will never get back."], "model": "switch-moe"},
            ],
            # What _one_of checks, for the OpenAPI document (null counts as not given).
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["texts"], "properties": {"texts": {"type": "array"}}},
            ],
        },
    )

    text: str | None = Field(None, description="One text to classify.")
    texts: list[str] | None = Field(None, description="Several texts, one result each.")
    model: str | None = Field(None, description="Model name (GET /v1/models); default if unset.")

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    def item_loc(self) -> str:
        """The body field the texts came from, for error locations."""
        return "text" if self.text is not None else "texts"


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class ModerateRequest(BaseModel):
    """Exactly one of ``text`` (judged as a user message) or ``messages`` (a conversation)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"text": "How do I bake sourdough bread?"},
                {
                    "messages": [
                        {"role": "user", "content": "Review this film for me."},
                        {"role": "assistant", "content": "positive (0.97)"},
                    ]
                },
            ],
            # What _one_of checks, for the OpenAPI document (null counts as not given).
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
            ],
        },
    )

    text: str | None = Field(None, min_length=1)
    messages: list[MessageIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> ModerateRequest:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of 'text' or 'messages'")
        return self


class CategoryOut(BaseModel):
    code: str = Field(examples=["S10"])
    name: str = Field(examples=["Hate"])


class VerdictOut(BaseModel):
    safe: bool
    blocked: bool
    categories: list[CategoryOut]
    model: str
    cached: bool
    latency_ms: float


class ScreensOut(BaseModel):
    """Verdicts of the two screens of one text (null only when that screen is switched off)."""

    input: VerdictOut | None
    output: VerdictOut | None


class ClassifyResultOut(BaseModel):
    index: int
    label: str = Field(
        description="The model's label: `negative` or `positive` for the sentiment models, "
        "`literal` or `hyperbole` for `hyperbole-lora` (`/v1/models` lists each model's)."
    )
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float]
    answered_by: str | None = Field(
        None,
        description="For `sentiment-cascade`: the member that answered, `sentiment-student` "
        "or (when the student was unsure) `sentiment-cnn-int8`.",
    )
    screens: ScreensOut


class ModelRef(BaseModel):
    name: str
    version: str


class TimingOut(BaseModel):
    guard_ms: float = Field(
        description="Screening wall time, from the first screen's start to the last verdict "
        "(the output screen starts while the input screen runs)."
    )
    model_ms: float = Field(description="Inference wall time (overlaps the input screen).")
    total_ms: float


class ClassifyResponse(BaseModel):
    model: ModelRef
    results: list[ClassifyResultOut]
    timing: TimingOut


class AdapterOut(BaseModel):
    rank: int
    alpha: float
    merged: bool = Field(description="Served from its own merged copy of the base weights.")
    test_auc: float | None = Field(
        None,
        description="ROC AUC on its held-out test set (0.5 is chance): how well its scores "
        "rank the second label above the first, whatever the threshold.",
    )
    majority_test_accuracy: float | None = Field(
        None,
        description="What answering the more frequent label every time scores on that test "
        "set: the floor its test_accuracy is to be read against.",
    )


class CascadeOut(BaseModel):
    student: str = Field(description="The model that answers first.")
    teacher: str = Field(description="The model that answers the texts the student is unsure of.")
    threshold: float = Field(
        description="Texts whose student confidence (probability of its label) is below this "
        "go to the teacher; chosen on validation reviews."
    )
    escalation_rate: float | None = Field(
        description="Share of the aclImdb test reviews sent to the teacher (from the card)."
    )
    validation_escalation_rate: float | None = Field(
        description="The same on the validation reviews the threshold was chosen on."
    )


class ModelOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    architecture: str
    params: int
    quantization: str | None
    size_bytes: int
    test_accuracy: float | None
    labels: list[str] = Field(description="The labels, the below-0.5 one first.")
    base: str | None = Field(None, description="For a LoRA adapter: the model it adapts.")
    adapter: AdapterOut | None = None
    cascade: CascadeOut | None = Field(
        None, description="For a cascade: its members, threshold and escalation rates."
    )
    default: bool


class OpenAIModelOut(BaseModel):
    """A model as OpenAI's clients list it (``client.models.list()``)."""

    id: str
    object: Literal["model"]
    created: int = Field(description="Unix seconds of the model card's date; 0 if unknown.")
    owned_by: str
    kind: Literal["classifier", "chat"]


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelOut]
    object: Literal["list"]
    data: list[OpenAIModelOut] = Field(description="The classifiers and the chat model.")


class ModerateResponse(VerdictOut):
    timing: dict[str, float]


class DriftFeatureOut(BaseModel):
    feature: Literal["length", "words", "oov_share", "tokens", "score"]
    test: Literal["wasserstein", "psi"]
    statistic: float
    threshold: float
    drift: bool | None = Field(description="null while the window is under DRIFT_MIN_WINDOW")


class DriftWordOut(BaseModel):
    word: str
    current_per_1k: float = Field(description="Occurrences per 1,000 in-vocabulary tokens")
    reference_per_1k: float


class DriftWordsOut(BaseModel):
    gained: list[DriftWordOut]
    lost: list[DriftWordOut]


class DriftCheckOut(BaseModel):
    at: str
    texts: int
    observed: int
    drift: bool | None
    drifted_features: list[str]
    features: list[DriftFeatureOut]
    words: DriftWordsOut


class DriftWindowOut(BaseModel):
    texts: int
    max_texts: int
    min_texts: int
    observed: int


class DriftReferenceOut(BaseModel):
    texts: int
    score_texts: int
    weights_sha256: str
    created: str


class DriftModelOut(BaseModel):
    model: str
    monitored: bool
    reason: str | None = Field(None, description="Why a model is not monitored")
    drift: bool | None = None
    window: DriftWindowOut | None = None
    reference: DriftReferenceOut | None = None
    check: DriftCheckOut | None = None


class DriftSettingsOut(BaseModel):
    window: int
    min_window: int
    check_every: int
    check_interval_s: float
    thresholds: dict[str, float]
    tests: dict[str, str]


class DriftResponse(BaseModel):
    enabled: bool
    settings: DriftSettingsOut | None = None
    models: list[DriftModelOut]


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadinessResponse(BaseModel):
    ready: bool
    checks: dict[str, Any]


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
