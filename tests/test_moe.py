import gzip
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from service.models.artifacts import PACKAGE_ARTIFACTS
from service.models.moe import (
    MoEConfig,
    RouterOutput,
    Routing,
    SwitchClassifier,
    SwitchLayer,
    dense_dispatch,
    expert_capacity,
    load_balancing_loss,
)
from service.models.registry import LoadedModel

FIXTURE = Path(__file__).parent / "fixtures" / "imdb_test_sample.jsonl.gz"


def _layer(**overrides: Any) -> SwitchLayer:
    torch.manual_seed(0)
    layer = SwitchLayer(MoEConfig(**overrides))
    return layer.eval()


@dataclass(frozen=True)
class _Reference:
    out: torch.Tensor
    expert_index: torch.Tensor  # [tokens, k]
    probs: torch.Tensor  # [tokens, experts]
    tokens_per_expert: list[int]
    dropped: int
    assignments: int


def _per_token_reference(layer: SwitchLayer, x: torch.Tensor) -> _Reference:
    """Every token through its top-k experts, one at a time, weighted by its gates.

    Each sequence is its own group: an expert takes at most `capacity` assignments of it,
    first come first served, all first choices (in token order) before any second choice.
    """
    cfg = layer.config
    batch, length, dim = x.shape
    factor = cfg.capacity_factor_train if layer.training else cfg.capacity_factor_eval
    capacity = max(1, math.ceil(cfg.top_k * length * factor / cfg.num_experts))
    tokens = x.reshape(-1, dim)
    probs = torch.softmax(layer.router(tokens), dim=-1)
    choices = [probs[t].topk(cfg.top_k) for t in range(tokens.shape[0])]
    out = torch.zeros_like(tokens)
    kept = [0] * cfg.num_experts
    dropped = 0
    for sequence in range(batch):
        load = [0] * cfg.num_experts
        for k in range(cfg.top_k):
            for t in range(sequence * length, (sequence + 1) * length):
                gate, e = choices[t].values[k], int(choices[t].indices[k])
                if load[e] < capacity:
                    load[e] += 1
                    out[t] += gate * layer.experts[e](tokens[t])
                else:
                    dropped += 1
        kept = [a + b for a, b in zip(kept, load, strict=True)]
    return _Reference(
        out=out.reshape(x.shape),
        expert_index=torch.stack([c.indices for c in choices]),
        probs=probs,
        tokens_per_expert=kept,
        dropped=dropped,
        assignments=tokens.shape[0] * cfg.top_k,
    )


def _assert_routing_matches(routing: Routing, want: _Reference) -> None:
    assert torch.equal(routing.router.expert_index, want.expert_index)
    torch.testing.assert_close(routing.router.probs, want.probs)
    assert routing.stats.tokens_per_expert.tolist() == want.tokens_per_expert
    assert routing.stats.dropped == want.dropped
    assert routing.stats.assignments == want.assignments


def test_index_dispatch_equals_per_token_reference_when_nothing_is_dropped():
    layer = _layer(capacity_factor_eval=10.0)  # capacity = whole sequence: no drops
    x = torch.randn(3, 20, 32)
    with torch.no_grad():
        got, routing = layer(x)
        want = _per_token_reference(layer, x)
    assert routing.stats.dropped == want.dropped == 0
    torch.testing.assert_close(got, want.out, rtol=1e-5, atol=1e-6)
    _assert_routing_matches(routing, want)
    # Nothing dropped: the kept counts are exactly the router's choices the aux loss counts.
    counts = torch.bincount(routing.router.expert_index.reshape(-1), minlength=10)
    assert torch.equal(routing.stats.tokens_per_expert, counts)


def test_top2_routing_equals_reference_too():
    layer = _layer(top_k=2, capacity_factor_eval=10.0)
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        got, routing = layer(x)
        want = _per_token_reference(layer, x)
    torch.testing.assert_close(got, want.out, rtol=1e-5, atol=1e-6)
    _assert_routing_matches(routing, want)


@pytest.mark.parametrize("top_k", [1, 2])
def test_returned_stats_equal_the_per_token_reference_when_tokens_drop(top_k: int):
    layer = _layer(top_k=top_k, capacity_factor_eval=1.0)  # 2 slots per expert per sequence
    x = torch.randn(4, 20, 32)
    with torch.no_grad():
        got, routing = layer(x)
        want = _per_token_reference(layer, x)
    assert want.dropped > 0  # the case under test: over-capacity assignments
    torch.testing.assert_close(got, want.out, rtol=1e-5, atol=1e-6)
    _assert_routing_matches(routing, want)
    stats = routing.stats
    assert int(stats.tokens_per_expert.sum()) + stats.dropped == stats.assignments == 80 * top_k


def test_dropping_keeps_exactly_capacity_tokens_per_expert_in_order():
    layer = _layer(num_experts=4, capacity_factor_eval=1.0)
    length = 16
    capacity = expert_capacity(length, 4, 1.0, 1)
    assert capacity == 4
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2, 0] = 50.0  # every token with feature 0 > 0 goes to expert 2
        x = torch.randn(2, length, 32)
        x[..., 0] = 1.0
        out, routing = layer(x)
        reference = _per_token_reference(layer, x)
    for row in range(2):
        processed = (out[row].abs().sum(dim=-1) > 0).tolist()
        # The first `capacity` tokens of each sequence are kept, in order; the rest drop.
        assert processed == [True] * capacity + [False] * (length - capacity)
    torch.testing.assert_close(out, reference.out)
    assert routing.stats.tokens_per_expert.tolist() == [0, 0, 2 * capacity, 0]
    assert routing.stats.dropped == 2 * (length - capacity)
    _assert_routing_matches(routing, reference)


def test_routing_of_a_text_does_not_depend_on_its_batch():
    layer = _layer(capacity_factor_eval=1.0)
    x = torch.randn(4, 20, 32)
    with torch.no_grad():
        together, routing = layer(x)
        alone = [layer(x[i : i + 1]) for i in range(4)]
    torch.testing.assert_close(together, torch.cat([out for out, _ in alone]))
    summed = torch.stack([r.stats.tokens_per_expert for _, r in alone]).sum(dim=0)
    assert torch.equal(routing.stats.tokens_per_expert, summed)
    assert routing.stats.dropped == sum(r.stats.dropped for _, r in alone)


def test_load_balancing_loss_is_one_for_uniform_routing():
    experts, tokens = 10, 100
    router = RouterOutput(
        expert_index=(torch.arange(tokens) % experts).unsqueeze(1),
        gates=torch.full((tokens, 1), 0.1),
        probs=torch.full((tokens, experts), 1 / experts),
        logits=torch.zeros(tokens, experts),
    )
    assert abs(float(load_balancing_loss(router, experts)) - 1.0) < 1e-6


def test_load_balancing_loss_grows_when_one_expert_takes_everything():
    experts, tokens = 10, 100
    probs = torch.zeros(tokens, experts)
    probs[:, 0] = 1.0
    router = RouterOutput(
        expert_index=torch.zeros(tokens, 1, dtype=torch.long),
        gates=torch.ones(tokens, 1),
        probs=probs,
        logits=torch.zeros(tokens, experts),
    )
    assert abs(float(load_balancing_loss(router, experts)) - experts) < 1e-6


def test_dense_dispatch_agrees_with_index_dispatch_for_one_group():
    layer = _layer(capacity_factor_eval=10.0)
    x = torch.randn(1, 30, 32)
    with torch.no_grad():
        torch.testing.assert_close(dense_dispatch(layer, x), layer(x)[0], rtol=1e-5, atol=1e-6)


def test_router_noise_only_in_training():
    layer = _layer()
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        assert torch.equal(layer.route(x[0]).logits, layer.route(x[0]).logits)
        layer.train()
        assert not torch.equal(layer.route(x[0]).logits, layer.route(x[0]).logits)


@pytest.mark.parametrize("mask_padding", [False, True])
def test_classifier_returns_logits_and_the_routing_of_the_same_call(mask_padding: bool):
    torch.manual_seed(0)
    config = MoEConfig(vocab_size=50, sequence_length=8, num_experts=4, mask_padding=mask_padding)
    model = SwitchClassifier(config).eval()
    ids = torch.randint(0, 50, (3, 8))
    with torch.no_grad():
        logits, routing = model.forward_with_routing(ids)
        assert logits.shape == (3, 2)
        assert torch.equal(model(ids), logits)  # plain forward: the same logits, alone
    assert routing.router.probs.shape == routing.router.logits.shape == (3 * 8, 4)
    assert routing.router.expert_index.shape == (3 * 8, 1)
    assert routing.stats.assignments == 3 * 8
    assert routing.stats.tokens_per_expert.shape == (4,)


def test_aux_loss_is_a_differentiable_function_of_the_returned_routing():
    torch.manual_seed(0)
    model = SwitchClassifier(MoEConfig(vocab_size=50, sequence_length=8)).train()
    logits, routing = model.forward_with_routing(torch.randint(0, 50, (3, 8)))
    assert logits.shape == (3, 2)
    aux = load_balancing_loss(routing.router, model.config.num_experts)
    assert aux.item() > 0
    aux.backward()
    assert model.switch.router.weight.grad is not None
    assert float(model.switch.router.weight.grad.abs().sum()) > 0


def _attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every submodule's attributes; dicts (parameters, buffers, children, hooks) shallowly
    copied, so writes into them show too."""
    return {
        name: {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in vars(module).items()
        }
        for name, module in model.named_modules()
    }


def _assert_unchanged(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    assert before.keys() == after.keys()
    for name, attrs in before.items():
        assert attrs.keys() == after[name].keys(), f"{name or 'model'}: attributes added/removed"
        for key, value in attrs.items():
            new = after[name][key]
            if isinstance(value, dict):
                assert value.keys() == new.keys(), f"{name}.{key} changed"
                assert all(value[k] is new[k] for k in value), f"{name}.{key} changed"
            else:
                assert new is value, f"{name or 'model'}.{key} was replaced during forward"


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_forward_writes_no_attribute_on_any_module(
    monkeypatch: pytest.MonkeyPatch, training: bool, mask_padding: bool
):
    torch.manual_seed(0)
    config = MoEConfig(
        vocab_size=50, sequence_length=8, num_experts=4, mask_padding=mask_padding, top_k=2
    )
    model = SwitchClassifier(config).train(training)
    ids = torch.randint(0, 50, (3, 8))
    ids[0, 5:] = 0
    before = _attributes(model)
    writes: list[tuple[str, str]] = []
    setattr_of_module = nn.Module.__setattr__

    def spy(self: nn.Module, name: str, value: Any) -> None:
        writes.append((type(self).__name__, name))
        setattr_of_module(self, name, value)

    calls: list[Callable[[], Any]] = [
        lambda: model(ids),
        lambda: model.forward_with_routing(ids),
        lambda: model.block(model.token_embedding(ids)),
        lambda: model.switch(torch.randn(2, 8, config.embed_dim)),
    ]
    monkeypatch.setattr(nn.Module, "__setattr__", spy)
    # The spy sees a write on any module (the control: an empty list below means no write).
    nn.Identity().probe = True
    assert writes == [("Identity", "probe")]
    writes.clear()
    for call in calls:
        call()
        with torch.inference_mode():
            call()
    monkeypatch.undo()
    assert writes == []
    _assert_unchanged(before, _attributes(model))


@pytest.fixture(scope="module")
def served_moe() -> LoadedModel:
    return LoadedModel(PACKAGE_ARTIFACTS / "switch-moe")


@pytest.fixture(scope="module")
def varied_texts() -> list[str]:
    """Real reviews of every length (some beyond the sequence length), plus edge cases."""
    with gzip.open(FIXTURE, "rt") as handle:
        reviews = [json.loads(line)["text"] for line in handle]
    return ["", "ok", "Dreadful.", "A masterpiece!!"] + reviews[:124]


def _run_in_threads(jobs: list[Callable[[], Any]], threads: int = 4) -> list[Any]:
    """Run the jobs on `threads` threads, released together by a barrier; job i on thread
    i % threads, in order. Results in job order; the first error is raised."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for i in range(offset, len(jobs), threads):
                results[i] = jobs[i]()
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in pool), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


def _batches(texts: list[str], threads: int, rounds: int) -> list[list[str]]:
    """Different batches for every thread and round: different slices, different sizes."""
    batches = []
    for r in range(rounds):
        for t in range(threads):
            size = 4 + 3 * t + r
            start = (17 * (r * threads + t)) % (len(texts) - size)
            batches.append(texts[start : start + size])
    return batches


def test_served_moe_answers_concurrent_batches_as_it_answers_them_one_by_one(
    served_moe: LoadedModel, varied_texts: list[str]
):
    batches = _batches(varied_texts, threads=4, rounds=6)
    assert len({tuple(b) for b in batches}) == len(batches)
    sequential = [served_moe.predict_proba(batch) for batch in batches]
    concurrent = _run_in_threads(
        [lambda batch=batch: served_moe.predict_proba(batch) for batch in batches]
    )
    assert concurrent == sequential  # exactly, batch by batch
    assert [served_moe.predict(b) for b in batches[:4]] == _run_in_threads(
        [lambda batch=batch: served_moe.predict(batch) for batch in batches[:4]]
    )


def test_served_moe_returns_each_concurrent_call_its_own_routing(
    served_moe: LoadedModel, varied_texts: list[str]
):
    module = served_moe.module
    assert isinstance(module, SwitchClassifier)

    def call(batch: list[str]) -> tuple[torch.Tensor, list[int], int, int]:
        ids = served_moe.vectorizer(batch)
        with torch.inference_mode():
            logits, routing = module.forward_with_routing(ids)
        stats = routing.stats
        return logits, stats.tokens_per_expert.tolist(), stats.dropped, stats.assignments

    batches = _batches(varied_texts, threads=4, rounds=12)
    sequential = [call(batch) for batch in batches]
    concurrent = _run_in_threads([lambda batch=batch: call(batch) for batch in batches])
    for (want_logits, *want_stats), (got_logits, *got_stats) in zip(
        sequential, concurrent, strict=True
    ):
        assert torch.equal(got_logits, want_logits)
        assert got_stats == want_stats
    # The batches differ, so their routing does too: a shared last-call slot would show.
    assert len({tuple(stats[0]) for _, *stats in sequential}) > 1
