"""Model benchmark: every shipped artifact's latency and throughput at several batch sizes,
measured in one run so the quantized variants read as ratios to fp32; the student and the
cascade against the int8 CNN (also at the service's default TORCH_THREADS); the LoRA adapter on
the fp32 CNN (shared base, mixed batches, merged copy) with its resident-memory cost; and the
Switch layer's index dispatch against the dense [tokens, experts, capacity] dispatch.

    python benchmarks/models_bench.py [--out benchmarks/results/models.md] [--repeats N]

Inputs are real-length token rows (the vectorizer's fixed length), so text length does not
matter; tokenization is excluded (it is the same for every variant).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from service.config import Settings
from service.models.adapters import ADAPTERS_FOLDER, AdapterArtifact, read_adapter
from service.models.artifacts import NAMES, PACKAGE_ARTIFACTS
from service.models.cascade import CascadeModel, is_cascade
from service.models.lora import BASE_ROW
from service.models.moe import MoEConfig, SwitchLayer, dense_dispatch
from service.models.registry import AdapterGroup, LoadedModel, ModelRegistry, positive_probability

BATCHES = (1, 8, 32, 128)
ADAPTER = "hyperbole-lora"
ADAPTER_BATCHES = (1, 32)
MEMORY_COPIES = 10  # adapters loaded at once for the resident-memory reading
SERVICE_THREADS: int = Settings.model_fields["torch_threads"].default


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_model(model: LoadedModel, batch: int, repeats: int) -> dict:
    ids = _ids(model, batch)
    return time_call(lambda: positive_probability(model.module, ids), batch, repeats)


def _ids(model: LoadedModel, batch: int) -> torch.Tensor:
    torch.manual_seed(batch)
    return torch.randint(2, model.vectorizer.vocab_size, (batch, model.vectorizer.sequence_length))


def time_call(fn: Callable[[], object], batch: int, repeats: int) -> dict:
    times = []
    with torch.inference_mode():
        for _ in range(3):
            fn()
        deadline = time.perf_counter() + 20.0
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
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


def time_adapter(root: Path, repeats: int) -> dict[tuple[str, int], dict]:
    """The adapter at batch 1 and 32: on the shared base (all rows the adapter's, and a
    half-and-half mixed batch), and merged into its own copy; the base beside it."""
    shared = ModelRegistry.load(["sentiment-cnn", ADAPTER], root=root)
    merged = ModelRegistry.load([ADAPTER], root=root, merge=[ADAPTER])
    base = shared.get("sentiment-cnn")
    assert isinstance(base, LoadedModel)
    group = AdapterGroup(base)  # the same forward the registry's group runs
    adapter = shared.get(ADAPTER)
    group.add(ADAPTER, _artifact_of(root, base))
    merged_module = merged.get(ADAPTER)._merged  # type: ignore[union-attr]
    rows: dict[tuple[str, int], dict] = {}
    for batch in ADAPTER_BATCHES:
        ids = _ids(base, batch)
        only = torch.zeros(batch, dtype=torch.long)
        half = torch.tensor([BASE_ROW if i % 2 else 0 for i in range(batch)])
        rows[("base (sentiment-cnn)", batch)] = time_model(base, batch, repeats)
        rows[("adapter, shared base", batch)] = time_call(
            lambda ids=ids, only=only: group.module(ids, only), batch, repeats
        )
        if batch > 1:
            rows[("half base, half adapter, one forward", batch)] = time_call(
                lambda ids=ids, half=half: group.module(ids, half), batch, repeats
            )
        rows[("adapter, merged copy", batch)] = time_call(
            lambda ids=ids: merged_module(ids), batch, repeats
        )
    del adapter
    return rows


def _artifact_of(root: Path, base: LoadedModel) -> AdapterArtifact:
    return read_adapter(root / ADAPTERS_FOLDER / ADAPTER, base.card)


STUDENT = "sentiment-student"
INT8 = "sentiment-cnn-int8"
CASCADE = "sentiment-cascade"
CASCADE_BATCHES = (1, 32, 128)
CASCADE_TEXTS = 4_096  # test reviews the cascade is timed on
BLOCK = 10  # calls of one model in a row, then of the other


def time_student_and_cascade(
    root: Path, data: Path, models: dict[str, LoadedModel], repeats: int, sweeps: int = 5
) -> dict:
    """The student, the int8 CNN and the cascade timed in turns (so that load from other
    processes hits them alike). Student and int8 CNN: random token rows as above, batch / p50
    over ``repeats`` rounds. Cascade and int8 CNN: real test reviews (tokenized beforehand)
    in consecutive batches, blocks of ``BLOCK`` batches in turns (each on the same batches,
    so the escalations are the real mix's); ``sweeps`` passes over all batches, throughput
    = texts / the fastest pass's time (other processes only ever add time)."""
    student, int8 = models[STUDENT], models[INT8]
    cascade = None
    if (root / CASCADE).is_dir() and data.exists():
        import random

        from service.training.data import read_aclimdb

        cascade = CascadeModel.load(root / CASCADE, lambda name: models[name])
        test = [r.text for r in read_aclimdb(data) if r.split == "test"]
        random.Random(0).shuffle(test)
        real = int8.vectorizer(test[:CASCADE_TEXTS])
    else:
        print(f"no {CASCADE} artifact or no reviews at {data}: cascade not timed", file=sys.stderr)
    out: dict = {"threshold": cascade.threshold if cascade else None}
    with torch.inference_mode():
        for batch in CASCADE_BATCHES:
            out.update(time_student_pair(student, int8, batch, repeats))
            if cascade is None:
                continue
            batches = [real[i : i + batch] for i in range(0, min(len(real), 512 * batch), batch)]
            texts = sum(len(x) for x in batches)
            best = {CASCADE: math.inf, "int8 real": math.inf}
            escalated = 0
            real_pair = {
                CASCADE: lambda x: cascade.forward_ids(x)[1],
                "int8 real": lambda x: positive_probability(int8.module, x),
            }
            for sweep in range(sweeps + 1):  # the first pass warms up
                total = dict.fromkeys(best, 0.0)
                for first in range(0, len(batches), BLOCK):  # blocks of batches, in turns
                    block = batches[first : first + BLOCK]
                    for name, fn in real_pair.items():
                        start = time.perf_counter()
                        out_block = [fn(x) for x in block]
                        total[name] += time.perf_counter() - start
                        if sweep == 0 and name == CASCADE:
                            escalated += sum(int(up.sum()) for up in out_block)
                if sweep:
                    best = {name: min(best[name], total[name]) for name in best}
            for name, seconds in best.items():
                out[(name, batch)] = {"per_s": texts / seconds,
                                      "p50_ms": seconds / len(batches) * 1e3}  # fmt: skip
            out[(CASCADE, batch)]["escalation_rate"] = escalated / texts
            for name in (STUDENT, INT8, CASCADE, "int8 real"):
                print(f"{name:<20} batch {batch:>3} (in turns): "
                      f"{out[(name, batch)]['per_s']:9.1f} reviews/s", file=sys.stderr)  # fmt: skip
    return out


def time_student_pair(
    student: LoadedModel, int8: LoadedModel, batch: int, repeats: int
) -> dict[tuple[str, int], dict[str, float]]:
    """The student and the int8 CNN on the same random token rows, in blocks of ``BLOCK``
    calls of each in turns (each model's own weights warm in cache, as when it serves)."""
    ids = _ids(student, batch)
    pair = {
        STUDENT: lambda: positive_probability(student.module, ids),
        INT8: lambda: positive_probability(int8.module, ids),
    }
    times: dict[str, list[float]] = {name: [] for name in pair}
    with torch.inference_mode():
        for _ in range(3):
            for fn in pair.values():
                fn()
        for _ in range(max(1, repeats // BLOCK)):
            for name, fn in pair.items():
                fn()
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    return {
        (name, batch): {
            "per_s": batch / statistics.median(ts),
            "p50_ms": statistics.median(ts) * 1e3,
        }
        for name, ts in times.items()
    }


def time_at_service_threads(
    student: LoadedModel, int8: LoadedModel, repeats: int
) -> dict[tuple[str, int], dict[str, float]]:
    """:func:`time_student_pair` at the service's default TORCH_THREADS (the setting a served
    model runs with unless configured), batches 1 and 32; the thread count is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(SERVICE_THREADS)
    try:
        out = {}
        for batch in (1, 32):
            out.update(time_student_pair(student, int8, batch, repeats))
        return out
    finally:
        torch.set_num_threads(before)


def _service_threads_lines(timed: dict) -> list[str]:
    lines = [
        "",
        f"The same pair at TORCH_THREADS={SERVICE_THREADS}, the service's default (one thread "
        "per process; the table above uses every core):",
        "",
        "| model | batch | p50 ms | reviews/s | x int8 CNN |",
        "|---|---:|---:|---:|---:|",
    ]
    for batch in (1, 32):
        for name in (STUDENT, INT8):
            r = timed[(name, batch)]
            ratio = r["per_s"] / timed[(INT8, batch)]["per_s"]
            lines.append(
                f"| {name} | {batch} | {r['p50_ms']:.3f} | {r['per_s']:,.0f} | {ratio:.1f} |"
            )
    return lines


def _student_lines(timed: dict) -> list[str]:
    lines = [
        "",
        f"Student and cascade against the int8 CNN, timed in turns (load from other processes "
        f"hits them alike). `{STUDENT}` and `{INT8}`: random token rows, blocks of {BLOCK} "
        f"calls of each in turns, batch / p50. `{CASCADE}` and `{INT8} (real mix)`: "
        f"consecutive batches of up to {CASCADE_TEXTS:,} shuffled aclImdb test reviews "
        f"(tokenized beforehand), blocks of {BLOCK} batches of each in turns over the same "
        "batches; texts / time of the fastest "
        "of 5 passes (ms = per batch):",
        "",
        "| model | batch | p50 ms | reviews/s | x int8 CNN | escalated |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for batch in CASCADE_BATCHES:
        pairs = [(STUDENT, INT8, STUDENT), (INT8, INT8, INT8)]
        if (CASCADE, batch) in timed:
            threshold = timed["threshold"]
            pairs += [
                (CASCADE, "int8 real", f"{CASCADE} (threshold {threshold:.3f}, real mix)"),
                ("int8 real", "int8 real", f"{INT8} (real mix)"),
            ]
        for name, base, label in pairs:
            r = timed[(name, batch)]
            ratio = r["per_s"] / timed[(base, batch)]["per_s"]
            rate = r.get("escalation_rate")
            lines.append(
                f"| {label} | {batch} | {r['p50_ms']:.3f} | {r['per_s']:,.0f} | {ratio:.1f} | "
                f"{'' if rate is None else f'{rate:.1%}'} |"
            )
    return lines


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def probe_memory(root: Path, copies: int, merge: bool) -> dict:
    """In this (fresh) process: resident memory of the fp32 base after it served a batch of
    32, then after attaching ``copies`` adapters (the shipped one, read ``copies`` times),
    then after one mixed batch of 32 over all of them. JSON on stdout."""
    from service.models.registry import AdapterModel

    base = LoadedModel(root / "sentiment-cnn")
    group = AdapterGroup(base)
    texts = ["a warm-up text for every allocation a forward makes"] * 32
    group.predict_proba(["sentiment-cnn"] * 32, texts)
    gc.collect()
    before = _rss_bytes()
    models = []
    for _ in range(copies):
        artifact = read_adapter(root / ADAPTERS_FOLDER / ADAPTER, base.card)
        name = f"{ADAPTER}-{len(models)}"
        artifact.card["name"] = name
        models.append(AdapterModel(artifact, group, merged=merge))
    gc.collect()
    loaded = _rss_bytes()
    for model in models[:1] if merge else []:
        model.predict(texts)
    if not merge and models:
        group.predict_proba([models[i % copies].info.name for i in range(32)], texts)
    gc.collect()
    return {"copies": copies, "merge": merge, "before": before, "loaded": loaded,
            "served": _rss_bytes()}  # fmt: skip


def adapter_memory(root: Path) -> dict[str, dict]:
    """Resident memory per adapter, shared and merged, each read in a fresh process."""
    results = {}
    for key, merge in (("shared", False), ("merged", True)):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.models_bench", "--probe-memory",
             str(MEMORY_COPIES), "--artifacts", str(root), *(["--merge"] if merge else [])],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[key] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def _adapter_lines(rows: dict[tuple[str, int], dict], memory: dict[str, dict]) -> list[str]:
    lines = [
        "",
        f"LoRA adapter `{ADAPTER}` on the fp32 CNN (the adapter's forward runs the base's "
        "layers plus the low-rank updates; merged = the updates folded into a copy of the "
        "base weights):",
        "",
        "| forward | batch | p50 ms | texts/s | x base |",
        "|---|---:|---:|---:|---:|",
    ]
    for (what, batch), r in rows.items():
        ratio = r["per_s"] / rows[("base (sentiment-cnn)", batch)]["per_s"]
        lines.append(f"| {what} | {batch} | {r['p50_ms']:.2f} | {r['per_s']:,.0f} | {ratio:.2f} |")

    def per(key: str, after: str) -> float:
        m = memory[key]
        return (m[after] - m["before"]) / m["copies"]

    shared, merged = memory["shared"], memory["merged"]
    lines += [
        "",
        f"Resident memory (VmRSS, read in a fresh process per row, after the base served a "
        f"batch of 32) per adapter, over {MEMORY_COPIES} adapters attached to one base:",
        "",
        "| adapters | base alone (MiB) | attached (MiB) | per adapter | after a mixed batch "
        "of 32 | per adapter |",
        "|---|---:|---:|---:|---:|---:|",
        f"| shared base | {shared['before'] / 2**20:.1f} | {shared['loaded'] / 2**20:.1f} | "
        f"**{per('shared', 'loaded') / 2**10:.0f} KiB** | {shared['served'] / 2**20:.1f} | "
        f"{per('shared', 'served') / 2**10:.0f} KiB |",
        f"| merged copies | {merged['before'] / 2**20:.1f} | {merged['loaded'] / 2**20:.1f} | "
        f"{per('merged', 'loaded') / 2**20:.1f} MiB | {merged['served'] / 2**20:.1f} | "
        f"{per('merged', 'served') / 2**20:.1f} MiB |",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/models.md")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--artifacts", default=str(PACKAGE_ARTIFACTS))
    parser.add_argument(
        "--data",
        default="../shared/data/aclImdb_labelled.tar.gz",
        help="aclImdb reviews: the cascade is timed on test reviews (their real mix)",
    )
    parser.add_argument("--probe-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory is not None:
        print(json.dumps(probe_memory(Path(args.artifacts), args.probe_memory, args.merge)))
        return 0

    models = {
        name: LoadedModel(Path(args.artifacts) / name)
        for name in NAMES
        if (Path(args.artifacts) / name).is_dir() and not is_cascade(Path(args.artifacts) / name)
    }
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
    root = Path(args.artifacts)
    adapter_rows = time_adapter(root, args.repeats) if (root / ADAPTERS_FOLDER).is_dir() else {}
    memory = adapter_memory(root) if adapter_rows else {}
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
    if STUDENT in models and INT8 in models:
        timed = time_student_and_cascade(Path(args.artifacts), Path(args.data), models, 200)
        lines += _student_lines(timed)
        at_service = time_at_service_threads(models[STUDENT], models[INT8], 200)
        lines += _service_threads_lines(at_service)
    if adapter_rows:
        lines += _adapter_lines(adapter_rows, memory)
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
