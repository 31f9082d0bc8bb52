"""The 1D-convolution sentiment classifier of the keras-io example
"text classification from scratch", in PyTorch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    vocab_size: int = 20_000
    sequence_length: int = 500
    embed_dim: int = 128
    filters: int = 128
    kernel_size: int = 7
    stride: int = 3
    hidden: int = 128
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


class SentimentCNN(nn.Module):
    """Embedding -> Dropout -> 2 x (Conv1d + ReLU) -> global max pool -> Dense -> logit."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.conv1 = nn.Conv1d(config.embed_dim, config.filters, config.kernel_size, config.stride)
        self.conv2 = nn.Conv1d(config.filters, config.filters, config.kernel_size, config.stride)
        self.dense = nn.Linear(config.filters, config.hidden)
        self.output = nn.Linear(config.hidden, 1)
        self.dropout = nn.Dropout(config.dropout)
        # Keras initialisation (uniform(-0.05, 0.05) embeddings, Glorot kernels, zero
        # biases): PyTorch's N(0, 1) embeddings make this model plateau lower.
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for layer in (self.conv1, self.conv2, self.dense, self.output):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The pooled convolution features, [batch, filters]."""
        x = self.dropout(self.embedding(token_ids)).transpose(1, 2)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return x.amax(dim=2)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(torch.relu(self.dense(pooled)))).squeeze(-1)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the positive class, [batch]."""
        return self.head(self.features(token_ids))
