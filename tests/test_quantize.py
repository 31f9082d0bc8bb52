import pytest
import torch

from service.models.cnn import CNNConfig, SentimentCNN
from service.models.quantize import (
    MAX_PRODUCT,
    Int4SentimentCNN,
    Int8SentimentCNN,
    calibrate_int8,
    dequantize_int4,
    float_products_are_exact,
    int4_tensors,
    int8_tensors,
    quantize_int4,
    quantize_per_channel,
)

SMALL = CNNConfig(vocab_size=300, sequence_length=60, embed_dim=32, filters=32, hidden=32)


def _model() -> SentimentCNN:
    torch.manual_seed(0)
    return SentimentCNN(SMALL).eval()


def test_int4_pack_round_trip_is_exact_for_representable_values():
    scale = torch.tensor([[0.5, 0.25]], dtype=torch.float16)
    q = torch.tensor([[-7, -3, 0, 1, 7, 2, 5, -1] * 4 + [3, -2, -7, 7, 0, 1, 2, 4] * 4])
    weight = q.float() * scale.float().repeat_interleave(32, dim=1)
    packed, got_scale = quantize_int4(weight)
    assert packed.dtype == torch.uint8 and packed.shape == (1, 32)  # two values per byte
    torch.testing.assert_close(got_scale.float(), scale.float(), rtol=1e-3, atol=0)
    torch.testing.assert_close(dequantize_int4(packed, got_scale), weight, rtol=1e-3, atol=1e-4)


def test_int4_error_is_bounded_by_half_a_step():
    torch.manual_seed(1)
    weight = torch.randn(16, 64)
    packed, scale = quantize_int4(weight)
    error = (dequantize_int4(packed, scale) - weight).abs()
    step = scale.float().repeat_interleave(32, dim=1)
    assert bool((error <= step / 2 + 1e-3).all())


def test_int8_per_channel_scales_each_output_channel():
    weight = torch.tensor([[1.0, -0.5], [100.0, 50.0]])
    q, scale = quantize_per_channel(weight)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -64], [127, 64]]
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 100 / 127]))


def test_int8_model_tracks_fp32_and_uses_int8_tensors():
    model = _model()
    ids = torch.randint(0, 300, (16, 60))
    tensors = int8_tensors(model, calibrate_int8(model, [ids]))
    assert tensors["conv1.q"].dtype == torch.int8 and tensors["embedding.q"].dtype == torch.int8
    quantized = Int8SentimentCNN(SMALL, tensors).eval()
    with torch.no_grad():
        want, got = model(ids), quantized(ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max() + 1e-3


def test_fp32_products_of_int8_values_are_exact_up_to_the_shipped_depth():
    depth = 7 * 128  # the shipped CNN: kernel 7 over 128 channels
    assert float_products_are_exact(depth)
    assert not float_products_are_exact(2**24 // MAX_PRODUCT + 1)
    # The worst case: every product at its largest magnitude, then random values at the edges.
    worst = torch.full((4, depth), -128, dtype=torch.int8)
    weights = torch.full((depth, 8), 127, dtype=torch.int8)
    generator = torch.Generator().manual_seed(3)
    edges = torch.tensor([-128, -127, 126, 127], dtype=torch.int8)
    mixed = edges[torch.randint(0, 4, (64, depth), generator=generator)]
    signs = edges[torch.randint(1, 4, (depth, 8), generator=generator)]
    for a, b in ((worst, weights), (mixed, signs), (mixed, weights)):
        assert torch.equal(torch.mm(a.float(), b.float()).to(torch.int32), torch._int_mm(a, b))
    assert int(torch._int_mm(worst, weights)[0, 0]) == -depth * MAX_PRODUCT


@pytest.mark.parametrize("length", [7, 25, 60])
def test_both_ways_of_multiplying_give_the_int8_cnn_the_same_bits(length):
    model = _model()
    tensors = int8_tensors(model, calibrate_int8(model, [torch.randint(0, 300, (16, 60))]))
    integer = Int8SentimentCNN(SMALL, tensors, integer_products=True).eval()
    floating = Int8SentimentCNN(SMALL, tensors, integer_products=False).eval()
    ids = torch.randint(0, 300, (9, 60))
    ids[:, length:] = 0  # padding after ``length`` tokens
    with torch.inference_mode():
        assert torch.equal(integer(ids), floating(ids))
        assert torch.equal(integer(ids[:1]), floating(ids[:1]))
    # Neither way stores anything beyond the artifact's tensors.
    assert integer.state_dict().keys() == floating.state_dict().keys()


def test_fp32_products_are_refused_where_they_could_round():
    wide = CNNConfig(vocab_size=50, sequence_length=30, embed_dim=160, filters=16, hidden=8)
    torch.manual_seed(0)
    model = SentimentCNN(wide).eval()
    tensors = int8_tensors(model, calibrate_int8(model, [torch.randint(0, 50, (4, 30))]))
    with pytest.raises(ValueError, match="not exact"):
        Int8SentimentCNN(wide, tensors, integer_products=False)
    assert Int8SentimentCNN(wide, tensors).integer_products  # the automatic choice too


def test_fp32_products_are_refused_below_full_fp32_matmul_precision():
    model = _model()
    tensors = int8_tensors(model, calibrate_int8(model, [torch.randint(0, 300, (4, 60))]))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # may round through bf16
    try:
        with pytest.raises(ValueError, match="not exact"):
            Int8SentimentCNN(SMALL, tensors, integer_products=False)
        assert Int8SentimentCNN(SMALL, tensors).integer_products
    finally:
        torch.set_float32_matmul_precision(before)


def test_int4_model_computes_the_cnn_on_its_dequantized_weights():
    model = _model()
    tensors = int4_tensors(model)
    quantized = Int4SentimentCNN(SMALL, tensors).eval()
    # The same network in fp32 with the int4 weights expanded: outputs must match exactly.
    reference = SentimentCNN(SMALL).eval()
    state = {
        "embedding.weight": dequantize_int4(tensors["embedding.q4"], tensors["embedding.scale"])
    }
    for name, shape in (("conv1", (32, 32, 7)), ("conv2", (32, 32, 7)), ("dense", (32, 32))):
        state[f"{name}.weight"] = dequantize_int4(
            tensors[f"{name}.q4"], tensors[f"{name}.scale"]
        ).reshape(shape)
        state[f"{name}.bias"] = tensors[f"{name}.bias"].float()
    state["output.weight"] = tensors["output.q"].float() * tensors["output.scale"][:, None]
    state["output.bias"] = tensors["output.bias"].float()
    reference.load_state_dict(state)
    ids = torch.randint(0, 300, (16, 60))
    with torch.no_grad():
        torch.testing.assert_close(quantized(ids), reference(ids), rtol=1e-4, atol=1e-6)
    weights = sum(t.numel() for k, t in tensors.items() if k.endswith(".q4"))
    assert weights * 2 == sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.endswith("weight") and not n.startswith("output")
    )
