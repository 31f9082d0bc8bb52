"""Model benchmark: every shipped artifact's latency and throughput at several batch sizes,
measured in one run so the quantized variants read as ratios to fp32; and the Switch
layer's index dispatch against the dense [tokens, experts, capacity] dispatch.

    python benchmarks/models_bench.py [--out benchmarks/results/models.md] [--repeats N]

Inputs are real-length token rows (the vectorizer's fixed length), so text length does not
matter; tokenization is excluded (it is the same for every variant).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from service.models.artifacts import NAMES, PACKAGE_ARTIFACTS
from service.models.moe import MoEConfig, SwitchLayer, dense_dispatch
from service.models.registry import LoadedModel, positive_probability

BATCHES = (1, 8, 32, 128)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_model(model: LoadedModel, batch: int, repeats: int) -> dict:
    torch.manual_seed(batch)
    ids = torch.randint(2, model.vectorizer.vocab_size, (batch, model.vectorizer.sequence_length))
    times = []
    with torch.inference_mode():
        for _ in range(3):
            positive_probability(model.module, ids)
        deadline = time.perf_counter() + 20.0
        for _ in range(repeats):
            start = time.perf_counter()
            positive_probability(model.module, ids)
            times.append(time.perf_counter() - start)
            if time.perf_counter() > deadline:
                break
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return {"p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3, "per_s": batch / p50, "runs": len(times)}


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once during the ops run under it: every storage
    an op creates counts from its creation until its last tensor is gone. Deterministic,
    unlike resident-memory readings, which the allocator's reuse of freed blocks blurs."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._owners: dict[int, list[int]] = {}  # storage address -> [tensors alive, bytes]

    def _release(self, key: int) -> None:
        owner = self._owners[key]
        owner[0] -= 1
        if owner[0] == 0:
            self.live -= owner[1]
            del self._owners[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in self._owners:
                self._owners[key][0] += 1
            else:
                size = tensor.untyped_storage().nbytes()
                self._owners[key] = [1, size]
                self.live += size
                self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._release, key)
        return out


def time_dispatch(kind: str, repeats: int) -> dict:
    """The Switch layer at 50 x 200 tokens: p50 time, and peak tensor memory of one call."""
    torch.manual_seed(0)
    layer = SwitchLayer(MoEConfig()).eval()
    x = torch.randn(50, 200, 32)
    # Both return the layer output; the index dispatch also returns its routing, dropped here.
    fn: Callable[[], torch.Tensor] = (
        (lambda: layer(x)[0]) if kind == "index" else (lambda: dense_dispatch(layer, x))
    )
    times = []
    with torch.inference_mode():
        fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        tracker = PeakTensorMemory()
        with tracker:
            fn()
    return {"p50_ms": statistics.median(times) * 1e3, "peak_mib": tracker.peak / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/models.md")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--artifacts", default=str(PACKAGE_ARTIFACTS))
    args = parser.parse_args()

    models = {name: LoadedModel(Path(args.artifacts) / name) for name in NAMES}
    rows = {}
    for name, model in models.items():
        for batch in BATCHES:
            rows[(name, batch)] = time_model(model, batch, args.repeats)
            r = rows[(name, batch)]
            print(
                f"{name:<20} batch {batch:>3}: p50 {r['p50_ms']:8.2f} ms  "
                f"{r['per_s']:9.1f} reviews/s",
                file=sys.stderr,
            )
    dispatch = {kind: time_dispatch(kind, 10) for kind in ("index", "dense")}

    lines = [
        "# Model benchmark",
        "",
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}. "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}.",
        "Command: `make bench-models`. Latency is one forward pass on token ids (tokenization "
        "excluded); median (p50) and 95th percentile over up to "
        f"{args.repeats} runs after 3 warm-up runs; throughput = batch / p50.",
        "",
        "| model | params | size (bytes) | test accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, model in models.items():
        info = model.info
        lines.append(
            f"| {name} | {info.params:,} | {info.size_bytes:,} | {info.test_accuracy:.4f} |"
        )
    lines += [
        "",
        "| model | batch | p50 ms | p95 ms | reviews/s | x fp32 CNN |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (name, batch), r in rows.items():
        ratio = r["per_s"] / rows[("sentiment-cnn", batch)]["per_s"]
        lines.append(
            f"| {name} | {batch} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['per_s']:,.0f} | {ratio:.2f} |"
        )
    lines += [
        "",
        "Switch layer at 50 x 200 tokens (10 experts, eval capacity factor 2.0), "
        "peak = the most tensor storage alive at once during one call (every storage an op "
        "creates, from creation until its last tensor is gone):",
        "",
        "| dispatch | p50 ms | peak memory (MiB) |",
        "|---|---:|---:|",
        f"| index (gather/scatter, per-sequence groups) | {dispatch['index']['p50_ms']:.2f} | "
        f"{dispatch['index']['peak_mib']:.1f} |",
        f"| dense [tokens, experts, capacity] | {dispatch['dense']['p50_ms']:.2f} | "
        f"{dispatch['dense']['peak_mib']:.1f} |",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
