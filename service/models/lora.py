"""Low-rank adapters (LoRA) on the sentiment CNN, and a forward that serves the base model
and any number of adapters in one batch.

An adapter adds ``scale * B @ A`` (rank r, ``scale = alpha / r``) to the embedding, both
convolutions and the dense layer of a frozen :class:`SentimentCNN`, and has its own output
head. As in the LoRA paper, one factor of each pair starts at zero, so a new adapter leaves
the base unchanged: ``B`` for the convolutions and the dense layer, the vocabulary-sized
factor for the embedding (as peft does). The embedding adapter covers only the tokens of the
training texts (``token_ids``): a token the training never saw cannot learn anything, so it
keeps the base embedding and costs no parameters.

This is our own module rather than peft: peft's LoRA layers wrap Linear, Embedding and
Conv1d, but peft itself pulls in transformers and accelerate at import time, and its mixed
adapter batches are per-row Python loops over sub-batches, the same thing done here in
~100 lines without the dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from service.models.cnn import CNNConfig, SentimentCNN

BASE_ROW = -1  # adapter index of a row served by the base model itself


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 4
    alpha: float = 8.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return asdict(self)


class CNNAdapter(nn.Module):
    """The trainable part: LoRA factors for every weighted layer of the CNN, and a head.

    Shapes (r = rank, E = embed_dim, F = filters, k = kernel, H = hidden, N = tokens):
    embedding A [N, r] (zero at start) and B [r, E]; conv A [r, in, k] and B [F, r] (zero);
    dense A [r, F] and B [H, r] (zero); head weight [1, H] and bias [1].
    """

    token_ids: torch.Tensor  # the vocabulary ids the embedding update covers, sorted

    def __init__(self, base: CNNConfig, lora: LoRAConfig, token_ids: torch.Tensor) -> None:
        super().__init__()
        if lora.rank < 1:
            raise ValueError("rank must be at least 1")
        self.base_config = base
        self.lora = lora
        r = lora.rank
        covered = token_ids.to(torch.long).unique(sorted=True)
        self.register_buffer("token_ids", covered)
        n_tokens = int(covered.numel())
        self.embedding_A = nn.Parameter(torch.zeros(n_tokens, r))
        self.embedding_B = nn.Parameter(torch.randn(r, base.embed_dim) / math.sqrt(r))
        self.conv1_A = nn.Parameter(torch.empty(r, base.embed_dim, base.kernel_size))
        self.conv1_B = nn.Parameter(torch.zeros(base.filters, r))
        self.conv2_A = nn.Parameter(torch.empty(r, base.filters, base.kernel_size))
        self.conv2_B = nn.Parameter(torch.zeros(base.filters, r))
        self.dense_A = nn.Parameter(torch.empty(r, base.filters))
        self.dense_B = nn.Parameter(torch.zeros(base.hidden, r))
        for factor in (self.conv1_A, self.conv2_A, self.dense_A):
            nn.init.kaiming_uniform_(factor, a=math.sqrt(5))  # what nn.Linear/Conv1d use
        self.head = nn.Linear(base.hidden, 1)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # --- the low-rank updates ---------------------------------------------------------------
    def dense_embedding_A(self) -> torch.Tensor:
        """The embedding factor over the whole vocabulary, [vocab, r]; zero outside
        ``token_ids`` (differentiable, so training can use it)."""
        full = self.embedding_A.new_zeros(self.base_config.vocab_size, self.lora.rank)
        return full.index_copy(0, self.token_ids, self.embedding_A)

    # (The scale multiplies the small factor, not the large product.)
    def embedding_delta(self, token_ids: torch.Tensor, full_A: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, full_A) @ (self.embedding_B * self.lora.scale)

    def conv_factors(self, which: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in, k], scale * B [F, r]) of convolution 1 or 2."""
        A, B = (self.conv1_A, self.conv1_B) if which == 1 else (self.conv2_A, self.conv2_B)
        return A, B * self.lora.scale

    def conv_delta(self, which: int, x: torch.Tensor) -> torch.Tensor:
        A, B = self.conv_factors(which)
        low = F.conv1d(x, A, stride=self.base_config.stride)  # [batch, r, length]
        return torch.matmul(B, low)

    def dense_delta(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled @ self.dense_A.T @ (self.dense_B.T * self.lora.scale)

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def merged_state(self, base: SentimentCNN) -> dict[str, torch.Tensor]:
        """A full CNN state dict with the updates folded into the weights and this head as
        the output layer: the same function as base + adapter, at the cost of a copy."""
        s = self.lora.scale
        state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        with torch.no_grad():
            # In place: a [vocab, E] temporary would double the merged copy's peak memory.
            state["embedding.weight"].addmm_(self.dense_embedding_A(), self.embedding_B, alpha=s)
            state["conv1.weight"] += torch.einsum("fr,rik->fik", self.conv1_B, self.conv1_A) * s
            state["conv2.weight"] += torch.einsum("fr,rik->fik", self.conv2_B, self.conv2_A) * s
            state["dense.weight"] += self.dense_B @ self.dense_A * s
            state["output.weight"] = self.head.weight.detach().clone()
            state["output.bias"] = self.head.bias.detach().clone()
        return state


def adapted_logits(
    base: SentimentCNN, adapter: CNNAdapter, token_ids: torch.Tensor
) -> torch.Tensor:
    """Logits of base + adapter, [batch] (training and evaluation; dropout follows the
    modules' train/eval mode)."""
    full_A = adapter.dense_embedding_A()
    x = base.embedding(token_ids) + adapter.embedding_delta(token_ids, full_A)
    x = base.dropout(x).transpose(1, 2)
    x = torch.relu(base.conv1(x) + adapter.conv_delta(1, x))
    x = torch.relu(base.conv2(x) + adapter.conv_delta(2, x))
    pooled = x.amax(dim=2)
    hidden = torch.relu(base.dense(pooled) + adapter.dense_delta(pooled))
    return adapter.head(base.dropout(hidden)).squeeze(-1)


class MultiAdapterCNN(nn.Module):
    """One frozen base CNN in memory and many adapters on top, served in mixed batches.

    ``forward(token_ids, adapter_index)`` runs every base layer once over the whole batch and
    adds each adapter's low-rank update to its own rows only (row index ``BASE_ROW`` = the
    base model). A row's logit is the same as when it is served alone by its own model.
    """

    def __init__(self, base: SentimentCNN) -> None:
        super().__init__()
        self.base = base.eval()
        self.adapters = nn.ModuleList()  # registered, so .to() and state_dict() see them
        self._adapters: list[CNNAdapter] = []  # the same, typed
        self._full_A: list[torch.Tensor] = []  # per adapter, the [vocab, r] embedding factor

    def add(self, adapter: CNNAdapter) -> int:
        """Attach an adapter (eval mode); returns its index for ``forward``."""
        if adapter.base_config != self.base.config:
            raise ValueError("the adapter was made for a CNN of another shape")
        adapter.eval()
        with torch.no_grad():
            self._full_A.append(adapter.dense_embedding_A().detach())
        self.adapters.append(adapter)
        self._adapters.append(adapter)
        return len(self._adapters) - 1

    def forward(self, token_ids: torch.Tensor, adapter_index: torch.Tensor) -> torch.Tensor:
        # Rows are put in adapter order first, so each adapter's rows are one contiguous
        # slice: its updates then read and write views, with no gather or scatter copies.
        order = torch.argsort(adapter_index, stable=True)
        in_order = bool(torch.equal(order, torch.arange(len(order))))
        ids = token_ids if in_order else token_ids[order]
        spans = self._spans(adapter_index[order])
        base = self.base
        x = base.embedding(ids)
        for k, start, end in spans:
            if k != BASE_ROW:
                x[start:end] += self._adapters[k].embedding_delta(ids[start:end], self._full_A[k])
        x = x.transpose(1, 2).contiguous()  # once, not once per convolution call
        for which, conv in ((1, base.conv1), (2, base.conv2)):
            outs = [
                conv(x[start:end])
                if k == BASE_ROW
                else self._adapted_conv(self._adapters[k], which, conv, x[start:end])
                for k, start, end in spans
            ]
            x = torch.relu(outs[0] if len(outs) == 1 else torch.cat(outs))
        pooled = x.amax(dim=2)
        hidden = base.dense(pooled)
        for k, start, end in spans:
            if k != BASE_ROW:
                hidden[start:end] += self._adapters[k].dense_delta(pooled[start:end])
        hidden = torch.relu(hidden)
        logits = torch.empty(len(ids), dtype=hidden.dtype)
        for k, start, end in spans:
            head = base.output if k == BASE_ROW else self._adapters[k].head
            logits[start:end] = head(hidden[start:end]).squeeze(-1)
        if in_order:
            return logits
        restored = torch.empty_like(logits)
        restored[order] = logits
        return restored

    @staticmethod
    def _adapted_conv(
        adapter: CNNAdapter, which: int, conv: nn.Conv1d, x: torch.Tensor
    ) -> torch.Tensor:
        """conv(x) + the adapter's update, as ONE convolution: the rank-r factor A rides
        along as r extra output channels of the base kernel (a convolution with r = 4
        output channels alone costs almost as much as the base's 128)."""
        A, B = adapter.conv_factors(which)
        filters = conv.out_channels
        assert conv.bias is not None
        weight = torch.cat([conv.weight, A])
        bias = torch.cat([conv.bias, conv.bias.new_zeros(len(A))])
        both = F.conv1d(x, weight, bias, stride=conv.stride)
        return both[:, :filters] + torch.matmul(B, both[:, filters:])

    def _spans(self, sorted_index: torch.Tensor) -> Sequence[tuple[int, int, int]]:
        """(adapter index, start, end) of each run of rows of one model."""
        values, counts = torch.unique_consecutive(sorted_index, return_counts=True)
        spans, start = [], 0
        for k, n in zip(values.tolist(), counts.tolist(), strict=True):
            if k != BASE_ROW and not 0 <= k < len(self._adapters):
                raise IndexError(f"no adapter with index {k}")
            spans.append((int(k), start, start + int(n)))
            start += int(n)
        return spans
