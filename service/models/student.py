"""The distilled student: embedding 32 wide, one Dense layer applied to every token in place
of the CNN's convolutions, global max pool (optionally beside the mean), Dense 32, one logit.

Shipped with an int8 embedding (symmetric, one scale per row) and fp32 dense layers. Served
by :class:`FoldedStudent`: the per-token Dense + ReLU depends on the token id alone, so at
load it is folded into a ``[vocab, hidden]`` table, and a forward is one gather, its max
(and its mean: a sum, a count and a division) and the small head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

INT8_MAX = 127
PAD_ID = 0  # the vectorizer's padding id
OOV_ID = 1  # the vectorizer's out-of-vocabulary id
POOLS = ("max", "max+mean")


@dataclass(frozen=True)
class StudentConfig:
    vocab_size: int = 10_000
    sequence_length: int = 500
    embed_dim: int = 32
    token_hidden: int = 32  # the per-token Dense layer (in place of the convolutions)
    hidden: int = 32
    dropout: float = 0.3
    # "max": global max pool. "max+mean": the max and the mean over the text's tokens
    # (padding left out), side by side; the mean keeps how often a cue occurs.
    pool: str = "max"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, not {self.pool!r}")

    @property
    def pooled_width(self) -> int:
        return self.token_hidden * (2 if self.pool == "max+mean" else 1)

    def to_dict(self) -> dict:
        return asdict(self)


class StudentClassifier(nn.Module):
    """Embedding -> Dense + ReLU per token -> global max pool (and mean) -> Dense 32 + ReLU
    -> logit."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.token_dense = nn.Linear(config.embed_dim, config.token_hidden)
        self.dense = nn.Linear(config.pooled_width, config.hidden)
        self.output = nn.Linear(config.hidden, 1)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for layer in (self.token_dense, self.dense, self.output):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the positive class, [batch]."""
        x = torch.relu(self.token_dense(self.dropout(self.embedding(token_ids))))
        if self.config.pool == "max":
            pooled = x.amax(dim=1)
        else:
            # Padding positions are zeroed: the features are ReLUs, so a zero leaves the max
            # of a non-empty text unchanged, and the sum is over the text's own tokens.
            real = (token_ids != PAD_ID).unsqueeze(-1)
            x = x * real
            count = real.sum(dim=1).clamp(min=1)
            pooled = torch.cat([x.amax(dim=1), x.sum(dim=1) / count], dim=-1)
        return self.output(self.dropout(torch.relu(self.dense(pooled)))).squeeze(-1)


def student_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The shipped tensors: int8 embedding rows with fp16 scales, the rest fp32."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    weight = state.pop("embedding.weight").float()
    scale = (weight.abs().amax(dim=1).clamp(min=1e-8) / INT8_MAX).half()
    q = torch.round(weight / scale.float()[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return {"embedding.q": q, "embedding.scale": scale, **{k: v.float() for k, v in state.items()}}


class FoldedStudent(nn.Module):
    """Inference form of the shipped student: ``relu(E W^T + b)`` precomputed per token.

    The table has one row more than the vocabulary, a copy of the out-of-vocabulary row, so
    ids of a larger vocabulary that begins with this one (the cascade's teacher's) are read
    after ``clamp(max=vocab_size)``: one cheap op instead of a ``where`` over the batch.
    """

    table: torch.Tensor
    dense_weight: torch.Tensor
    dense_bias: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor

    def __init__(self, config: StudentConfig, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        embedding = tensors["embedding.q"].float() * tensors["embedding.scale"].float()[:, None]
        if embedding.shape != (config.vocab_size, config.embed_dim):
            raise ValueError(f"embedding shape {tuple(embedding.shape)} does not match {config}")
        table = torch.relu(
            embedding @ tensors["token_dense.weight"].t() + tensors["token_dense.bias"]
        )
        self.mean_pool = config.pool == "max+mean"
        if self.mean_pool:
            table[PAD_ID] = 0  # as in training: padding adds nothing to the max or the sum
        # Plain attributes, not buffers: a buffer is read through nn.Module.__getattr__, and
        # at batch 1 those lookups cost a sixth of the forward. Nothing moves or saves this
        # module (it is built from the artifact's tensors at load).
        self.table = torch.cat([table, table[OOV_ID : OOV_ID + 1]]).contiguous()
        self.oov_copy_id = config.vocab_size  # the row an id clamped to vocab_size reads
        self.dense_weight = tensors["dense.weight"].t().contiguous()
        self.dense_bias = tensors["dense.bias"].clone()
        self.output_weight = tensors["output.weight"].reshape(-1).clone()
        self.output_bias = tensors["output.bias"].clone()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # Gather, max pool (faster than embedding_bag's max mode on CPU), the small head.
        features = F.embedding(token_ids, self.table)
        pooled = features.amax(dim=1)
        if self.mean_pool:
            # The text's length: its ids other than padding (0); ids are never negative, so
            # the sign is 1 for a token and 0 for padding (the cheapest count at batch 1). (A
            # column of ones in the table would count them in the same gather, but a row 33
            # floats wide gathers about 1.5x slower than 32.)
            count = token_ids.sign().sum(dim=1, keepdim=True).clamp_(min=1)
            pooled = torch.cat([pooled, features.sum(dim=1) / count], dim=-1)
        # Broadcast products, not a matrix product: each row's sums then run in the same order
        # whatever the batch size, so a text scores exactly the same alone and in a batch
        # (as fast as F.linear at these sizes). In place where it can be: at batch 1 every op
        # and allocation costs more than its arithmetic.
        hidden = (pooled[:, :, None] * self.dense_weight).sum(1).add_(self.dense_bias).relu_()
        return (hidden * self.output_weight).sum(-1).add_(self.output_bias)
