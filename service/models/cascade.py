"""The student-then-teacher cascade: the distilled student answers every text; the texts it is
unsure of (confidence, the probability of its predicted class, below the card's threshold) go
to the int8 CNN in one batched forward within the same call. Each prediction names the model
that answered.

The artifact is a folder with only ``card.json``: the threshold (chosen on validation data),
its figures, and the two models it uses by name, version and weights hash; loading refuses a
member whose weights are not the ones the card was built with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from service.models.artifacts import CARD, ArtifactError, check_named, folder_size
from service.models.registry import LoadedModel, ModelInfo, Prediction, positive_probability
from service.models.student import OOV_ID

ARCHITECTURE = "cascade"


def is_cascade(folder: Path) -> bool:
    """Whether ``folder`` holds a cascade card (and no weights of its own)."""
    card = folder / CARD
    if not card.is_file():
        return False
    try:
        return json.loads(card.read_text()).get("architecture") == ARCHITECTURE
    except (ValueError, AttributeError):
        return False


class CascadeModel:
    """A ServedModel over two loaded artifacts: ``student`` first, ``teacher`` when unsure."""

    def __init__(
        self, card: dict, student: LoadedModel, teacher: LoadedModel, size_bytes: int
    ) -> None:
        for role, model in (("student", student), ("teacher", teacher)):
            ref = card.get(role, {})
            if ref.get("weights_sha256") != model.card.get("weights_sha256"):
                raise ArtifactError(
                    f"cascade {card.get('name')!r}: its {role} {model.info.name!r} has weights "
                    f"{model.card.get('weights_sha256')}, but the card was built with "
                    f"{ref.get('weights_sha256')}; rebuild with `make train`"
                )
        self.card = card
        self.student = student
        self.teacher = teacher
        self.threshold = float(card["threshold"])
        # The student's vocabulary is the first ids of the teacher's (both fitted on the same
        # reviews), so one tokenization serves both: ids beyond it are the student's OOV.
        s_vocab, t_vocab = student.vectorizer.vocabulary, teacher.vectorizer.vocabulary
        self._shared_ids = (
            t_vocab[: len(s_vocab)] == s_vocab
            and student.vectorizer.sequence_length == teacher.vectorizer.sequence_length
        )
        # Teacher ids past the student's vocabulary become its out-of-vocabulary id: by one
        # clamp when the student's table keeps an OOV copy right after its vocabulary.
        self._clamp_to_oov = (
            getattr(student.module, "oov_copy_id", None) == student.vectorizer.vocab_size
        )
        self.info = ModelInfo(
            name=card["name"],
            version=card["version"],
            architecture=ARCHITECTURE,
            params=student.info.params + teacher.info.params,
            quantization=teacher.info.quantization,
            size_bytes=size_bytes + student.info.size_bytes + teacher.info.size_bytes,
            test_accuracy=card.get("test", {}).get("accuracy"),
            card=card,
            cascade={
                "student": student.info.name,
                "teacher": teacher.info.name,
                "threshold": self.threshold,
                "escalation_rate": card.get("test", {}).get("escalation_rate"),
                "validation_escalation_rate": card.get("validation", {}).get("escalation_rate"),
            },
        )
        self.batch_group = self.info.name

    @classmethod
    def load(cls, folder: Path, get: Callable[[str], LoadedModel]) -> CascadeModel:
        """The cascade in ``folder``; ``get(name)`` gives a loaded member artifact."""
        path = folder / CARD
        if not path.is_file():
            raise ArtifactError(f"artifact {folder.name!r}: missing {CARD} in {folder}")
        card = json.loads(path.read_text())
        for key in ("name", "version", "threshold", "student", "teacher"):
            if key not in card:
                raise ArtifactError(f"cascade {folder.name!r}: card.json has no {key!r}")
        check_named(folder, card, "cascade")
        student = get(card["student"]["name"])
        teacher = get(card["teacher"]["name"])
        return cls(card, student, teacher, folder_size(folder))

    def forward(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(positive) per text, whether the teacher answered it)."""
        if self._shared_ids:
            return self.forward_ids(self.teacher.vectorizer(texts))
        return self._forward(self.student.vectorizer(texts), None, texts)

    def forward_ids(self, teacher_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` from the teacher's token ids (when the vocabularies are shared)."""
        if not self._shared_ids:
            raise ValueError("the student's vocabulary is not a prefix of the teacher's")
        limit = self.student.vectorizer.vocab_size
        if self._clamp_to_oov:
            student_ids = teacher_ids.clamp(max=limit)
        else:
            student_ids = torch.where(teacher_ids < limit, teacher_ids, OOV_ID)
        return self._forward(student_ids, teacher_ids, ())

    def _forward(
        self, student_ids: torch.Tensor, teacher_ids: torch.Tensor | None, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            p = positive_probability(self.student.module, student_ids)
            escalated = torch.maximum(p, 1 - p) < self.threshold  # as the card's rule
            index = escalated.nonzero().squeeze(1)
            if len(index):  # one batched forward for all the unsure texts
                if teacher_ids is not None:
                    ids = teacher_ids.index_select(0, index)
                else:
                    ids = self.teacher.vectorizer([texts[int(i)] for i in index])
                p = p.index_put((index,), positive_probability(self.teacher.module, ids))
        return p, escalated

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        return self.forward(texts)[0].tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        p, escalated = self.forward(texts)
        names = (self.student.info.name, self.teacher.info.name)
        return [
            Prediction.from_positive(prob, answered_by=names[int(up)])
            for prob, up in zip(p.tolist(), escalated.tolist(), strict=True)
        ]
