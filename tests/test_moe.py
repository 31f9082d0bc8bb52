import torch

from service.models.moe import (
    MoEConfig,
    RouterOutput,
    SwitchClassifier,
    SwitchLayer,
    dense_dispatch,
    expert_capacity,
    load_balancing_loss,
)


def _layer(**overrides) -> SwitchLayer:
    torch.manual_seed(0)
    layer = SwitchLayer(MoEConfig(**overrides))
    return layer.eval()


def _per_token_reference(layer: SwitchLayer, x: torch.Tensor) -> torch.Tensor:
    """Every token through its top-k experts, one at a time, weighted by its gates."""
    tokens = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(tokens)
    probs = torch.softmax(layer.router(tokens), dim=-1)
    for t in range(tokens.shape[0]):
        gates, experts = probs[t].topk(layer.config.top_k)
        for gate, e in zip(gates, experts, strict=True):
            out[t] += gate * layer.experts[int(e)](tokens[t])
    return out.reshape(x.shape)


def test_index_dispatch_equals_per_token_reference_when_nothing_is_dropped():
    layer = _layer(capacity_factor_eval=10.0)  # capacity = whole sequence: no drops
    x = torch.randn(3, 20, 32)
    with torch.no_grad():
        got = layer(x)
        want = _per_token_reference(layer, x)
    assert layer.last_stats.dropped == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_top2_routing_equals_reference_too():
    layer = _layer(top_k=2, capacity_factor_eval=10.0)
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _per_token_reference(layer, x), rtol=1e-5, atol=1e-6)


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
        out = layer(x)
        reference = _per_token_reference(layer, x)
    for row in range(2):
        processed = (out[row].abs().sum(dim=-1) > 0).tolist()
        # The first `capacity` tokens of each sequence are kept, in order; the rest drop.
        assert processed == [True] * capacity + [False] * (length - capacity)
        torch.testing.assert_close(out[row, :capacity], reference[row, :capacity])
    assert layer.last_stats.tokens_per_expert.tolist() == [0, 0, 2 * capacity, 0]
    assert layer.last_stats.dropped == 2 * (length - capacity)


def test_routing_of_a_text_does_not_depend_on_its_batch():
    layer = _layer(capacity_factor_eval=1.0)
    x = torch.randn(4, 20, 32)
    with torch.no_grad():
        together = layer(x)
        alone = torch.cat([layer(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)


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
        torch.testing.assert_close(dense_dispatch(layer, x), layer(x), rtol=1e-5, atol=1e-6)


def test_router_noise_only_in_training():
    layer = _layer()
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        assert torch.equal(layer.route(x[0]).logits, layer.route(x[0]).logits)
        layer.train()
        assert not torch.equal(layer.route(x[0]).logits, layer.route(x[0]).logits)


def test_classifier_outputs_two_way_logits_and_aux_loss():
    model = SwitchClassifier(MoEConfig(vocab_size=50, sequence_length=8)).train()
    logits = model(torch.randint(0, 50, (3, 8)))
    assert logits.shape == (3, 2)
    assert model.aux_loss().item() > 0


def test_token_dropout_hides_words_only_in_training_and_never_padding():
    torch.manual_seed(0)
    model = SwitchClassifier(MoEConfig(vocab_size=50, sequence_length=8, token_dropout=0.5))
    seen = []
    model.token_embedding.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 0, 0]] * 16)
    model.train()(ids)
    hidden = seen[-1]
    assert bool((hidden[:, 6:] == 0).all())  # padding stays padding
    replaced = hidden[:, :6] == 1
    assert 0 < int(replaced.sum()) < replaced.numel()  # some words became OOV, not all
    model.eval()(ids)
    assert torch.equal(seen[-1], ids)  # evaluation sees the text as it is
