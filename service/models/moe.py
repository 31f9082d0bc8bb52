"""A Switch-Transformer classifier (keras-io "text classification with Switch Transformer"),
with index-based expert dispatch.

Routing is per sequence: each sequence is one routing group, so an expert's capacity and
which tokens it drops depend only on that text, never on what else shares the batch. Tokens
are dispatched by index (gather, expert, scatter-add), so memory grows linearly with tokens,
never as tokens x experts x capacity.

Forwards have no side effects: the Switch layer returns its routing (the router's decision
and the dispatch counts) next to its output instead of storing it on the module, so the
auxiliary loss and the metrics read the numbers of the very call that produced them, and
one module can serve several threads at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 20_000
    sequence_length: int = 200
    embed_dim: int = 32
    num_heads: int = 2
    ff_dim: int = 32
    num_experts: int = 10
    top_k: int = 1
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    router_jitter: float = 0.01
    aux_loss_weight: float = 0.01
    dropout: float = 0.25
    head_dropout: float = 0.5
    hidden: int = 32
    # Keep padding out of attention keys and out of the mean pool (the keras-io example
    # attends to and averages over padding too).
    mask_padding: bool = False
    embed_dropout: float = 0.0
    # In training, replace this fraction of (non-padding) tokens by the OOV id: the model
    # leans less on rare, title- or actor-specific words that do not carry over to new films.
    token_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RouterOutput:
    """What the router decided for every token: read by the loss and by serving metrics."""

    expert_index: torch.Tensor  # [tokens, k] chosen experts
    gates: torch.Tensor  # [tokens, k] router probability of each chosen expert
    probs: torch.Tensor  # [tokens, experts]
    logits: torch.Tensor  # [tokens, experts]


@dataclass(frozen=True)
class RoutingStats:
    """Per-forward routing numbers (summed over the batch)."""

    tokens_per_expert: torch.Tensor  # [experts] assignments kept
    dropped: int  # assignments over capacity
    assignments: int  # tokens x k


@dataclass(frozen=True)
class Routing:
    """Everything one Switch-layer forward decided, returned with its output.

    ``router`` feeds the load-balancing loss, ``stats`` the expert shares and drop rate.
    """

    router: RouterOutput
    stats: RoutingStats


def expert_capacity(group_size: int, num_experts: int, capacity_factor: float, top_k: int) -> int:
    return max(1, math.ceil(top_k * group_size * capacity_factor / num_experts))


def load_balancing_loss(router: RouterOutput, num_experts: int) -> torch.Tensor:
    """Switch Transformer auxiliary loss: E * sum_e f_e * P_e (1.0 when routing is uniform).

    f_e is the fraction of assignments sent to expert e, P_e the mean router probability.
    """
    counts = torch.bincount(router.expert_index.reshape(-1), minlength=num_experts)
    fraction = counts.to(router.probs.dtype) / router.expert_index.numel()
    mean_prob = router.probs.mean(dim=0)
    return num_experts * torch.sum(fraction * mean_prob)


def positions_in_expert(
    expert_index: torch.Tensor, group: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """For each assignment, its 0-based arrival order at its expert within its group.

    A stable sort by (group, expert) keeps token order, so earlier tokens get earlier slots.
    """
    key = group * num_experts + expert_index
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=int(key.max().item()) + 1 if key.numel() else 1)
    starts = torch.cumsum(counts, 0) - counts
    positions = torch.empty_like(key)
    positions[order] = torch.arange(key.numel(), device=key.device) - starts[key[order]]
    return positions


class Expert(nn.Module):
    def __init__(self, embed_dim: int, ff_dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(embed_dim, ff_dim)
        self.down = nn.Linear(ff_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class SwitchLayer(nn.Module):
    """Top-k routed feed-forward layer with capacity; dropped tokens output zero.

    ``forward`` returns ``(output, routing)`` and writes nothing on the module.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.router = nn.Linear(config.embed_dim, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            Expert(config.embed_dim, config.ff_dim) for _ in range(config.num_experts)
        )

    def route(self, tokens: torch.Tensor) -> RouterOutput:
        router_in = tokens
        if self.training and self.config.router_jitter > 0:
            jitter = self.config.router_jitter
            router_in = tokens * torch.empty_like(tokens).uniform_(1 - jitter, 1 + jitter)
        logits = self.router(router_in)
        probs = torch.softmax(logits, dim=-1)
        gates, expert_index = probs.topk(self.config.top_k, dim=-1)
        return RouterOutput(expert_index=expert_index, gates=gates, probs=probs, logits=logits)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        batch, length, dim = x.shape
        cfg = self.config
        tokens = x.reshape(-1, dim)
        router = self.route(tokens)
        factor = cfg.capacity_factor_train if self.training else cfg.capacity_factor_eval
        capacity = expert_capacity(length, cfg.num_experts, factor, cfg.top_k)

        # Flatten the k choices in priority order: all first choices, then second choices.
        expert_index = router.expert_index.t().reshape(-1)
        gates = router.gates.t().reshape(-1)
        token_of = torch.arange(tokens.shape[0], device=x.device).repeat(cfg.top_k)
        group = token_of // length
        positions = positions_in_expert(expert_index, group, cfg.num_experts)
        kept = positions < capacity

        out = torch.zeros_like(tokens)
        kept_per_expert = torch.zeros(cfg.num_experts, dtype=torch.long, device=x.device)
        for e, expert in enumerate(self.experts):
            chosen = torch.nonzero(kept & (expert_index == e), as_tuple=True)[0]
            if chosen.numel() == 0:
                continue
            token_ids = token_of[chosen]
            y = expert(tokens.index_select(0, token_ids)) * gates[chosen].unsqueeze(-1)
            out.index_add_(0, token_ids, y)
            kept_per_expert[e] = chosen.numel()

        stats = RoutingStats(
            tokens_per_expert=kept_per_expert,
            dropped=int((~kept).sum().item()),
            assignments=int(expert_index.numel()),
        )
        return out.reshape(batch, length, dim), Routing(router=router, stats=stats)


def dense_dispatch(layer: SwitchLayer, x: torch.Tensor) -> torch.Tensor:
    """The [tokens, experts, capacity] one-hot dispatch of the keras-io example, for
    comparison only (benchmarks and tests): same routing, memory tokens x experts x capacity.

    Top-1, one routing group per call (the whole batch), as in the example.
    """
    batch, length, dim = x.shape
    cfg = layer.config
    tokens = x.reshape(-1, dim)
    router = layer.route(tokens)
    capacity = expert_capacity(tokens.shape[0], cfg.num_experts, cfg.capacity_factor_eval, 1)
    mask = F.one_hot(router.expert_index[:, 0], cfg.num_experts)  # [T, E]
    position = torch.cumsum(mask, dim=0) * mask - 1  # [T, E], -1 where not routed
    keep = (position < capacity) & (mask > 0)
    dispatch = F.one_hot(position.clamp(min=0), capacity) * keep.unsqueeze(-1)  # [T, E, C]
    dispatch = dispatch.to(x.dtype)
    combine = dispatch * router.gates[:, :1].unsqueeze(-1)
    expert_in = torch.einsum("tec,td->ecd", dispatch, tokens)  # [E, C, D]
    expert_out = torch.stack([expert(expert_in[e]) for e, expert in enumerate(layer.experts)])
    return torch.einsum("tec,ecd->td", combine, expert_out).reshape(batch, length, dim)


class TransformerBlock(nn.Module):
    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(
            config.embed_dim, config.num_heads, dropout=0.0, batch_first=True
        )
        self.switch = SwitchLayer(config)
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.dropout1 = nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, padding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Routing]:
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        x = self.norm1(x + self.dropout1(attended))
        switched, routing = self.switch(x)
        # Tokens the switch layer dropped contribute zero here: only the residual carries them.
        return self.norm2(x + self.dropout2(switched)), routing


class SwitchClassifier(nn.Module):
    """Token + position embedding -> Switch Transformer block -> mean pool -> 2-way logits.

    ``model(ids)`` returns the logits only; ``forward_with_routing(ids)`` also returns the
    block's routing, for the load-balancing loss and the routing metrics.
    """

    def __init__(self, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.position_embedding = nn.Embedding(config.sequence_length, config.embed_dim)
        self.block = TransformerBlock(config)
        self.dense = nn.Linear(config.embed_dim, config.hidden)
        self.output = nn.Linear(config.hidden, 2)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        for embedding in (self.token_embedding, self.position_embedding):
            nn.init.uniform_(embedding.weight, -0.05, 0.05)

    @property
    def switch(self) -> SwitchLayer:
        return self.block.switch

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        logits, _ = self.forward_with_routing(token_ids)
        return logits

    def forward_with_routing(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, Routing]:
        """The logits and the routing of this very call (nothing is kept on the module)."""
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        if self.training and self.config.token_dropout > 0:
            hide = torch.rand(token_ids.shape, device=token_ids.device) < self.config.token_dropout
            token_ids = token_ids.masked_fill(hide & (token_ids != 0), 1)
        x = self.token_embedding(token_ids) + self.position_embedding(positions)
        x = self.embed_dropout(x)
        if self.config.mask_padding:
            padding = token_ids == 0
            padding[:, 0] = False  # an empty text still has one position to attend to
            x, routing = self.block(x, padding)
            keep = (~padding).unsqueeze(-1).to(x.dtype)
            x = (x * keep).sum(dim=1) / keep.sum(dim=1)
        else:
            x, routing = self.block(x)
            x = x.mean(dim=1)
        x = self.head_dropout(torch.relu(self.dense(self.head_dropout(x))))
        return self.output(x), routing
