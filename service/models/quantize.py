"""Quantized variants of the sentiment CNN.

int8 (static): weights and activations in int8. Each convolution runs as im2col followed by
an int8 x int8 -> int32 matrix product, then one per-channel rescale. The product is
``torch._int_mm`` where the CPU has fast integer products (VNNI, AMX); without them (AVX2
alone) oneDNN's integer path is 13-18x slower than an fp32 product, so the same integers are
multiplied by fp32 GEMM instead: every partial sum is an integer below 2**24, exact in fp32,
so both ways give the same bits. Which one is faster is timed once per process.

The embedding table is stored in int8 with the scale of the first convolution's input, so a
looked-up row already is that convolution's int8 input. The second convolution's input (a
ReLU output) is quantized to asymmetric int8 with a scale calibrated on training data. The
tiny dense head (0.6% of the work) runs in fp32 from int8 weights.

int4 (weight-only): every weight matrix in signed 4-bit with one fp16 scale per group of
``GROUP`` input values, two values per byte. The embedding stays packed in memory and only
the looked-up rows are expanded; the other weights are expanded once at load.

Both variants are plain ``nn.Module``s built from a dict of tensors (the safetensors file).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from service.models.cnn import CNNConfig, SentimentCNN
from service.models.padding import trim_for_convolutions

GROUP = 32
INT8_MAX = 127
# The largest |product| in a convolution: conv2's input is stored as u - 128, in [-128, 127].
MAX_PRODUCT = 128 * INT8_MAX
FP32_EXACT = 2**24  # every integer of at most this magnitude is exact in fp32

logger = logging.getLogger(__name__)


# --- int8 ---------------------------------------------------------------------------------


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output channel (dim 0)."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-8) / INT8_MAX
    q = torch.round(flat / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(weight.shape), scale.float()


def _conv_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d weight [out, in, k] -> matrix [k * in, out] in the (tap, channel) order of
    _im2col's rows."""
    return weight.permute(0, 2, 1).reshape(weight.shape[0], -1).t().contiguous()


def float_products_are_exact(depth: int) -> bool:
    """Whether an fp32 product of int8 matrices with ``depth`` terms per sum is exact: every
    partial sum, in whatever order the GEMM adds, is an integer of magnitude below 2**24."""
    return depth * MAX_PRODUCT < FP32_EXACT


@functools.cache
def integer_products_are_faster() -> bool:
    """Whether ``torch._int_mm`` beats an fp32 product of the same int8 values on this CPU,
    timed once per process on a convolution-sized product (the best of 5 of each)."""
    generator = torch.Generator().manual_seed(0)  # leaves the global random stream alone
    a = torch.randint(-INT8_MAX, INT8_MAX + 1, (128, 896), dtype=torch.int8, generator=generator)
    b = torch.randint(-INT8_MAX, INT8_MAX + 1, (896, 128), dtype=torch.int8, generator=generator)
    a_float, b_float = a.float(), b.float()

    def best(product: Callable[[], torch.Tensor]) -> float:
        product()  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        return min(times)

    integer = best(lambda: torch._int_mm(a, b))
    floating = best(lambda: torch.mm(a_float, b_float))
    faster = integer < floating
    logger.info(
        "int8 products",
        extra={
            "product": "torch._int_mm" if faster else "fp32 GEMM on int8 values (exact)",
            "int_mm_us": round(integer * 1e6, 1),
            "fp32_us": round(floating * 1e6, 1),
        },
    )
    return faster


def _im2col(x: torch.Tensor, kernel: int, stride: int) -> tuple[torch.Tensor, int]:
    """[batch, length, channels] (contiguous) -> [batch * out_length, kernel * channels].

    With channels last, one window of ``kernel`` positions is one contiguous run of memory,
    so the rows are a strided view and the copy into a matrix moves whole runs.
    """
    batch, length, channels = x.shape
    out_length = (length - kernel) // stride + 1
    windows = x.as_strided(
        (batch, out_length, kernel * channels), (length * channels, stride * channels, 1)
    )
    # Rows overlap in memory (stride < row length); a matrix product needs them apart, and
    # reshape alone would keep the overlapping view when batch == 1.
    rows = windows.reshape(batch * out_length, kernel * channels).contiguous()
    return rows, out_length


def calibrate_int8(model: SentimentCNN, batches: list[torch.Tensor]) -> dict[str, float]:
    """Static activation ranges, observed on training batches.

    The second convolution's input range is the 99.99th percentile of the first
    convolution's ReLU outputs: the rare larger values saturate instead of costing
    resolution for all the others.
    """
    model.eval()
    samples = []
    with torch.no_grad():
        for ids in batches:
            x = model.embedding(ids).transpose(1, 2)
            samples.append(torch.relu(model.conv1(x)).flatten())
    values = torch.cat(samples)
    k = max(1, int(values.numel() * 0.9999))
    conv2_max = float(values.kthvalue(k).values)
    embed_max = float(model.embedding.weight.detach().abs().max())
    return {"conv1_input_max": embed_max, "conv2_input_max": conv2_max}


def int8_tensors(model: SentimentCNN, ranges: dict[str, float]) -> dict[str, torch.Tensor]:
    """The int8 variant's tensors, ready for safetensors."""
    s_in1 = ranges["conv1_input_max"] / INT8_MAX
    s_in2 = ranges["conv2_input_max"] / 255.0  # ReLU output: [0, max] -> uint8 range
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = {
        "embedding.q": torch.round(state["embedding.weight"] / s_in1)
        .clamp(-INT8_MAX, INT8_MAX)
        .to(torch.int8),
        "conv1.input_scale": torch.tensor([s_in1]),
        "conv2.input_scale": torch.tensor([s_in2]),
    }
    for name in ("conv1", "conv2", "dense", "output"):
        q, scale = quantize_per_channel(state[f"{name}.weight"])
        tensors[f"{name}.q"] = q
        tensors[f"{name}.scale"] = scale
        tensors[f"{name}.bias"] = state[f"{name}.bias"].float()
    return tensors


class Int8SentimentCNN(nn.Module):
    """Inference-only CNN whose convolutions run int8 x int8 -> int32."""

    # Buffers registered in __init__, declared for the type checker.
    embedding: torch.Tensor
    conv1_matrix: torch.Tensor
    conv1_rescale: torch.Tensor
    conv1_bias: torch.Tensor
    conv2_matrix: torch.Tensor
    conv2_rescale: torch.Tensor
    conv2_bias: torch.Tensor
    conv2_offset: torch.Tensor
    dense_weight: torch.Tensor
    dense_bias: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor

    def __init__(
        self,
        config: CNNConfig,
        tensors: dict[str, torch.Tensor],
        integer_products: bool | None = None,
    ) -> None:
        """``integer_products``: multiply with ``torch._int_mm`` (True) or with exact fp32
        GEMM (False); None chooses the faster on this CPU. The outputs are the same bits."""
        super().__init__()
        self.config = config
        t = tensors
        depth = config.kernel_size * max(config.embed_dim, config.filters)
        # Exact only in true fp32: a lowered matmul precision may round through bf16/tf32.
        exact = (
            float_products_are_exact(depth) and torch.get_float32_matmul_precision() == "highest"
        )
        if integer_products is None:
            integer_products = not exact or integer_products_are_faster()
        elif not integer_products and not exact:
            raise ValueError(f"fp32 products over {depth} terms are not exact here")
        self.integer_products = integer_products
        self.register_buffer("embedding", t["embedding.q"])
        s_in1, s_in2 = float(t["conv1.input_scale"]), float(t["conv2.input_scale"])
        self.s_in2 = s_in2
        for name, s_in in (("conv1", s_in1), ("conv2", s_in2)):
            matrix = _conv_matrix(t[f"{name}.q"])
            self.register_buffer(f"{name}_matrix", matrix)
            self.register_buffer(f"{name}_rescale", (t[f"{name}.scale"] * s_in).float())
            self.register_buffer(f"{name}_bias", t[f"{name}.bias"])
        # The fp32 copies of the two conv matrices (0.9 MB) when fp32 GEMM multiplies; not
        # buffers, so the module's state is the artifact's either way. Built once from the
        # artifact: a later load_state_dict would not refresh them (nothing does one).
        self._float_matrices = (
            None if integer_products else (self.conv1_matrix.float(), self.conv2_matrix.float())
        )
        # Conv2's input is stored as (u - 128) in int8; adding 128 * column sums restores u.
        self.register_buffer(
            "conv2_offset", 128 * self.conv2_matrix.to(torch.int32).sum(dim=0, dtype=torch.int32)
        )
        for name in ("dense", "output"):
            weight = t[f"{name}.q"].float() * t[f"{name}.scale"][:, None]
            self.register_buffer(f"{name}_weight", weight)
            self.register_buffer(f"{name}_bias", t[f"{name}.bias"])

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        # Integer convolutions, so trailing padding cut this way changes no output bit.
        token_ids = trim_for_convolutions(token_ids, cfg.kernel_size, cfg.stride, layers=2)
        batch = token_ids.shape[0]
        x = self.embedding.index_select(0, token_ids.reshape(-1)).reshape(
            batch, token_ids.shape[1], -1
        )  # int8 [batch, length, embed]
        floats = self._float_matrices
        if floats is not None:
            x = x.float()  # the same integers, for the fp32 product
        cols, length = _im2col(x, cfg.kernel_size, cfg.stride)
        # The rescales run in place on one fp32 buffer: the same operations in the same
        # order as relu(acc * rescale + bias) etc., so the same bits, without a new tensor
        # per step (20% of a batch-32 forward).
        # fp32 GEMM's sums are the integers themselves, exact in fp32, as int32 -> fp32 is.
        acc = (
            torch._int_mm(cols, self.conv1_matrix) if floats is None else torch.mm(cols, floats[0])
        )
        h = acc * self.conv1_rescale  # fp32 [batch*len, filters]
        h.add_(self.conv1_bias).relu_().div_(self.s_in2).round_().clamp_(0, 255).sub_(128)
        x2 = (h.to(torch.int8) if floats is None else h).reshape(batch, length, -1)
        cols, length = _im2col(x2, cfg.kernel_size, cfg.stride)
        acc = (
            torch._int_mm(cols, self.conv2_matrix)
            if floats is None
            else torch.mm(cols, floats[1]).to(torch.int32)
        ).add_(self.conv2_offset)
        h = acc * self.conv2_rescale
        h.add_(self.conv2_bias).relu_()
        pooled = h.reshape(batch, length, -1).amax(dim=1)
        hidden = torch.relu(pooled @ self.dense_weight.t() + self.dense_bias)
        return (hidden @ self.output_weight.t() + self.output_bias).squeeze(-1)


# --- int4 ---------------------------------------------------------------------------------


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed 4-bit ([-7, 7]) with one fp16 scale per ``group`` values of a row.

    Returns (packed uint8 [rows, cols / 2], scales fp16 [rows, cols / group]).
    """
    rows = weight.shape[0]
    flat = weight.reshape(rows, -1).float()
    if flat.shape[1] % group:
        raise ValueError(f"row length {flat.shape[1]} is not a multiple of the group {group}")
    grouped = flat.reshape(rows, -1, group)
    scale = (grouped.abs().amax(dim=2, keepdim=True).clamp(min=1e-8) / 7).half()
    q = torch.round(grouped / scale.float()).clamp(-7, 7).to(torch.int8).reshape(rows, -1)
    nibbles = (q + 8).to(torch.uint8)  # 1..15
    packed = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return packed, scale.squeeze(2)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of quantize_int4 for any leading shape: [..., cols / 2] -> [..., cols] fp32."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    q = torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], -1)
    grouped = q.reshape(*q.shape[:-1], scale.shape[-1], -1).float()
    return (grouped * scale.float().unsqueeze(-1)).reshape(q.shape)


def int4_tensors(model: SentimentCNN) -> dict[str, torch.Tensor]:
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    for name in ("embedding", "conv1", "conv2", "dense", "output"):
        weight = state[f"{name}.weight"]
        if name == "output":  # one row of 128: int8 costs 64 bytes more and keeps it exact
            q, scale = quantize_per_channel(weight)
            tensors["output.q"], tensors["output.scale"] = q, scale
        else:
            tensors[f"{name}.q4"], tensors[f"{name}.scale"] = quantize_int4(weight)
        if f"{name}.bias" in state:
            tensors[f"{name}.bias"] = state[f"{name}.bias"].half()
    return tensors


class Int4SentimentCNN(nn.Module):
    """Weight-only int4 CNN: packed embedding rows expand on lookup."""

    # Buffers registered in __init__, declared for the type checker.
    embedding_q4: torch.Tensor
    embedding_scale: torch.Tensor
    conv1_weight: torch.Tensor
    conv1_bias: torch.Tensor
    conv2_weight: torch.Tensor
    conv2_bias: torch.Tensor
    dense_weight: torch.Tensor
    dense_bias: torch.Tensor
    output_weight: torch.Tensor
    output_bias: torch.Tensor

    def __init__(self, config: CNNConfig, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        t = tensors
        self.register_buffer("embedding_q4", t["embedding.q4"])
        self.register_buffer("embedding_scale", t["embedding.scale"])
        shapes = {
            "conv1": (config.filters, config.embed_dim, config.kernel_size),
            "conv2": (config.filters, config.filters, config.kernel_size),
            "dense": (config.hidden, config.filters),
        }
        for name, shape in shapes.items():
            weight = dequantize_int4(t[f"{name}.q4"], t[f"{name}.scale"]).reshape(shape)
            self.register_buffer(f"{name}_weight", weight)
            self.register_buffer(f"{name}_bias", t[f"{name}.bias"].float())
        self.register_buffer("output_weight", t["output.q"].float() * t["output.scale"][:, None])
        self.register_buffer("output_bias", t["output.bias"].float())

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = dequantize_int4(self.embedding_q4[token_ids], self.embedding_scale[token_ids])
        x = x.transpose(1, 2)
        x = torch.relu(nn.functional.conv1d(x, self.conv1_weight, self.conv1_bias, cfg.stride))
        x = torch.relu(nn.functional.conv1d(x, self.conv2_weight, self.conv2_bias, cfg.stride))
        hidden = torch.relu(x.amax(dim=2) @ self.dense_weight.t() + self.dense_bias)
        return (hidden @ self.output_weight.t() + self.output_bias).squeeze(-1)
