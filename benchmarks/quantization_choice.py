"""Int8 tooling for the sentiment CNN, measured side by side in one process.

Methods: the fp32 model in eager torch (baseline); the shipped int8 artifact (service's own
static int8, ``torch._int_mm`` convolutions); ONNX Runtime fp32 and static int8 (QDQ,
per-channel weights, MinMax and Percentile calibration); torchao's PT2E flow with the
X86InductorQuantizer, run through ``torch.compile`` (and, for comparison, lowered to oneDNN
ops without compiling). Every method is scored on the same test reviews and calibrated on
the same training reviews; latency is one forward pass on token ids (tokenization excluded).

    python -m benchmarks.quantization_choice [--data imdb_reviews.jsonl.gz] [--limit 5000]

Run it from the repository root, with the Makefile's GLIBC_TUNABLES for figures comparable
with benchmarks/results/models.md.

ONNX Runtime, onnx and torchao come from the ``bench`` extra; a method whose package is
missing or fails is reported as such instead of stopping the run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from service.models import quantize
from service.models.artifacts import VOCAB
from service.models.quantize import calibrate_int8, int8_tensors
from service.models.registry import LoadedModel
from service.models.vectorizer import Vectorizer

_WORKDIR = Path(tempfile.mkdtemp(prefix="quantization_choice_"))

ARTIFACTS = Path(__file__).resolve().parent.parent / "service" / "artifacts"
DEFAULT_DATA = Path("/work/shared/data/imdb_reviews.jsonl.gz")
BATCHES = (32, 1)
EVAL_BATCH = 32
# Calibration batches all of one size: ONNX Runtime's Percentile calibrator stacks them.
CALIB_BATCH = 50
SEED = 1337

Predict = Callable[[torch.Tensor], torch.Tensor]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The int8 implementation this process runs (the source may change while it runs).
_QUANTIZE_SHA = _sha256(Path(quantize.__file__))


@dataclass
class Method:
    name: str
    predict: dict[int, Predict]  # batch size -> forward (token ids -> positive logits)
    files: list[Path]
    artifact: str  # format on disk
    runtime: str  # what serving it needs beyond torch + safetensors
    costs: dict[str, float] = field(default_factory=dict)  # one-off / start-up seconds
    notes: list[str] = field(default_factory=list)
    accuracy: float = float("nan")
    agreement: float = float("nan")
    timings: dict[int, list[float]] = field(default_factory=dict)
    # Autograd mode of every call: the service's inference_mode, except where noted.
    mode: Callable[[], contextlib.AbstractContextManager] = torch.inference_mode

    def forward(self, batch: int) -> Predict:
        return self.predict.get(batch) or self.predict[0]

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class Failure:
    name: str
    error: str


# --- data ---------------------------------------------------------------------------------


def load_reviews(path: Path, limit: int, calibration: int) -> tuple[list, list]:
    """(test sample, calibration reviews), each a list of (text, label).

    The file is ordered by split and label, so taking its first rows would give one class
    only: the test reviews are a seeded sample of the test split, the calibration reviews
    the first ``calibration`` of a seeded shuffle of the training split.
    """
    test, train = [], []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            pair = (row["text"], int(row["label"]))
            if row["split"] == "test":
                test.append(pair)
            elif row["split"] == "train":
                train.append(pair)
    rng = random.Random(SEED)
    if 0 < limit < len(test):
        test = rng.sample(test, limit)
    rng.shuffle(train)
    return test, train[:calibration]


def batches_of(ids: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def padded_batches(ids: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Fixed-size batches (the last one padded with copies of row 0), so that methods
    specialised to one input shape see no other."""
    out = []
    for chunk in batches_of(ids, size):
        if len(chunk) < size:
            chunk = torch.cat([chunk, ids[:1].expand(size - len(chunk), -1)])
        out.append(chunk.clone())
    return out


# --- methods ------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def torch_methods(calib_ids: torch.Tensor) -> tuple[Method, Method, LoadedModel]:
    fp32, load_fp32 = timed(lambda: LoadedModel(ARTIFACTS / "sentiment-cnn"))
    int8, load_int8 = timed(lambda: LoadedModel(ARTIFACTS / "sentiment-cnn-int8"))
    if int8.vectorizer.vocabulary != fp32.vectorizer.vocabulary:
        raise RuntimeError("the fp32 and int8 artifacts have different vocabularies")
    # The shipped int8 artifact is built offline; redo its quantization step here (same
    # calibration reviews as the other methods) only to time it.
    batches = batches_of(calib_ids, CALIB_BATCH)
    _, build = timed(lambda: int8_tensors(fp32.module, calibrate_int8(fp32.module, batches)))
    base = Method(
        "torch fp32 eager (baseline)",
        {0: fp32.module},
        [ARTIFACTS / "sentiment-cnn" / "model.safetensors"],
        "safetensors",
        "-",
        {"load (per start)": load_fp32},
    )
    ours = Method(
        "service int8 (torch._int_mm)",
        {0: int8.module},
        [ARTIFACTS / "sentiment-cnn-int8" / "model.safetensors"],
        "safetensors",
        "-",
        {"quantize + calibrate (offline)": build, "load (per start)": load_int8},
        [f"calibration ranges in the artifact: {int8.card['quantization_details']['ranges']}"],
    )
    return base, ours, fp32


class _IdsReader:
    """ONNX Runtime calibration data: the calibration reviews' token ids, in batches."""

    def __init__(self, ids: torch.Tensor) -> None:
        self._batches = iter(b.numpy() for b in batches_of(ids, CALIB_BATCH))

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"ids": batch}


def ort_methods(fp32: nn.Module, calib_ids: torch.Tensor, threads: int) -> list[Method | Failure]:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The reader class needs the package's base class, imported only here.
    reader_cls = type("IdsReader", (_IdsReader, CalibrationDataReader), {})
    example = calib_ids[:EVAL_BATCH]
    path = _WORKDIR / "cnn.onnx"
    notes = []

    def export() -> None:
        kwargs = dict(
            input_names=["ids"],
            output_names=["logit"],
            dynamic_axes={"ids": {0: "batch"}, "logit": {0: "batch"}},
        )
        try:
            torch.onnx.export(fp32, (example,), str(path), dynamo=True, **kwargs)
            notes.append("exported with torch.onnx.export(dynamo=True)")
        except ImportError as error:  # the dynamo exporter needs onnxscript
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    fp32, (example,), str(path), dynamo=False, opset_version=17, **kwargs
                )
            notes.append(
                f"dynamo exporter unavailable ({error}); exported with the TorchScript "
                "exporter (dynamo=False, opset 17)"
            )

    _, export_s = timed(export)
    onnx.checker.check_model(str(path))

    def session(model: Path) -> tuple[ort.InferenceSession, list[str]]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        optimized = model.with_suffix(".optimized.onnx")
        options.optimized_model_filepath = str(optimized)
        sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
        return sess, [f"{op} x{n}" if n > 1 else op for op, n in sorted(ops.items())]

    def runner(sess: ort.InferenceSession) -> Predict:
        return lambda ids: torch.from_numpy(sess.run(None, {"ids": ids.numpy()})[0])

    (fp32_sess, fp32_ops), fp32_start = timed(lambda: session(path))
    methods: list[Method | Failure] = [
        Method(
            "ORT fp32",
            {0: runner(fp32_sess)},
            [path],
            "ONNX protobuf",
            f"onnxruntime {ort.__version__}",
            {"export to ONNX (offline)": export_s, "session (per start)": fp32_start},
            [*notes, f"ops after ORT optimization: {', '.join(fp32_ops)}"],
        )
    ]

    prepared = _WORKDIR / "cnn.pre.onnx"
    _, pre_s = timed(lambda: quant_pre_process(str(path), str(prepared)))
    for label, calibration, extra in (
        ("MinMax", CalibrationMethod.MinMax, {}),
        ("Percentile 99.999", CalibrationMethod.Percentile, {"CalibPercentile": 99.999}),
    ):
        out = _WORKDIR / f"cnn.int8.{calibration.name.lower()}.onnx"

        def quantize(out: Path = out, calibration=calibration, extra=extra) -> None:
            quantize_static(
                str(prepared),
                str(out),
                reader_cls(calib_ids),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibration,
                extra_options=extra,
            )

        name = f"ORT int8 QDQ, {label}"
        try:
            _, quant_s = timed(quantize)
            (sess, ops), start_s = timed(lambda out=out: session(out))
        except Exception as error:  # report the failure, measure the rest
            traceback.print_exc()
            methods.append(Failure(name, f"{type(error).__name__}: {error}"))
            continue
        methods.append(
            Method(
                name,
                {0: runner(sess)},
                [out],
                "ONNX protobuf",
                f"onnxruntime {ort.__version__}",
                {
                    "export to ONNX (offline)": export_s,
                    "pre-process + quantize_static (offline)": pre_s + quant_s,
                    "session (per start)": start_s,
                },
                [
                    "S8S8, per-channel weights, static activation scales",
                    f"ops after ORT optimization: {', '.join(ops)}",
                ],
            )
        )
    return methods


class ModuleReLUCNN(nn.Module):
    """The same network and weights as SentimentCNN in eval mode (its dropout is then a
    no-op and is left out), with the ReLUs as ``nn.ReLU`` modules: X86InductorQuantizer
    finds a Conv1d only in a (Conv1d, nn.ReLU) pattern, so with ``torch.relu`` calls (as the
    model is written) it leaves both convolutions fp32."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.embedding, self.conv1, self.conv2 = base.embedding, base.conv1, base.conv2
        self.dense, self.output = base.dense, base.output
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(token_ids).transpose(1, 2)
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.output(self.relu3(self.dense(x.amax(dim=2)))).squeeze(-1)


# A server's start with the torchao artifact: load the saved program, compile, first calls.
_TORCHAO_START = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
start = time.perf_counter()
import torch
import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # registers the int8 passes
torch._inductor.config.freezing = True
module = torch.export.load(sys.argv[1]).module()
times = {"import + load": time.perf_counter() - start}
fn = torch.compile(module, dynamic=False)
ids = torch.randint(2, 20000, (32, 500))
with torch.no_grad():
    for b in (32, 1):
        start = time.perf_counter()
        fn(ids[:b])
        times[f"compile + first call, batch {b}"] = time.perf_counter() - start
print(json.dumps(times))
"""


def torchao_start(archive: Path) -> dict[str, float]:
    """Start-up of a fresh process on the archive: first with an empty Inductor cache (a new
    machine or container), then again with the cache that run left (a restart)."""
    cache = Path(tempfile.mkdtemp(dir=_WORKDIR, prefix="inductor_"))
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    costs = {}
    for label in ("cold cache", "warm cache"):
        out = subprocess.run(
            [sys.executable, "-c", _TORCHAO_START, str(archive)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        times = json.loads(out.stdout.strip().splitlines()[-1])
        costs.update({f"{k}, {label} (per start)": v for k, v in times.items()})
    return costs


def prune_unused(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy without the parameters the quantized graph no longer reads (the fp32 weights
    that int8 copies replaced), so that the saved archive holds only what runs."""
    module = copy.deepcopy(module)
    used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(module.get_submodule(owner) if owner else module, attr)
    return module


def torchao_methods(fp32: nn.Module, calib_ids: torch.Tensor) -> list[Method | Failure]:
    import torchao
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # Inductor's int8 fusion and weight prepacking run on frozen (constant) weights.
    torch._inductor.config.freezing = True
    version = f"torchao {torchao.__version__}"
    compiler = f"{version} + a C++ compiler (Inductor) at start"
    example = calib_ids[:EVAL_BATCH].clone()
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    offline = "export + prepare + calibrate + convert (offline)"
    results: list[Method | Failure] = []

    def quantize(model: nn.Module) -> tuple[torch.fx.GraphModule, float, str]:
        def run() -> torch.fx.GraphModule:
            exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch_dim},))
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported.module(), quantizer)
            with torch.no_grad():
                for ids in batches_of(calib_ids, CALIB_BATCH):
                    prepared(ids)
            return convert_pt2e(prepared)

        converted, seconds = timed(run)
        nodes = list(converted.graph.nodes)
        dequant = torch.ops.quantized_decomposed.dequantize_per_tensor.default
        quantized = {
            op: sum(1 for n in nodes if n.target == op and n.args[0].target == dequant)
            for op in (torch.ops.aten.conv1d.default, torch.ops.aten.linear.default)
        }
        conv, linear = quantized.values()
        note = (
            f"int8 (activations and weights): {conv} of 2 Conv1d, {linear} of 2 Linear; "
            "the embedding stays fp32 (the quantizer has no embedding recipe)"
        )
        return converted, seconds, note

    def save(converted: torch.fx.GraphModule, name: str) -> Path:
        path = _WORKDIR / f"{name}.pt2"
        program = torch.export.export(
            prune_unused(converted), (example,), dynamic_shapes=({0: batch_dim},)
        )
        torch.export.save(program, str(path))
        return path

    def first_calls(
        fn: Predict, mode: Callable[[], contextlib.AbstractContextManager] = torch.no_grad
    ) -> dict[str, float]:
        with mode():
            return {
                f"compile + first call, batch {b} (in this process)": timed(
                    lambda b=b: fn(example[:b])
                )[1]
                for b in BATCHES
            }

    size_note = "size: the quantized program saved with torch.export.save (.pt2)"
    no_grad = "called under torch.no_grad(), as torchao documents it"
    for written, model in (("nn.ReLU", ModuleReLUCNN(fp32).eval()), ("as written", fp32)):
        name = f"torchao PT2E x86, {written}, compile static"
        try:
            converted, build_s, note = quantize(model)
            archive = save(converted, "pt2e_" + written.replace(".", "_").replace(" ", "_").lower())
            start_costs = torchao_start(archive)
            # dynamic=False: one static graph per batch size.
            static = torch.compile(converted, dynamic=False)
            first_calls(static)
            results.append(
                Method(
                    name,
                    {0: static},
                    [archive],
                    "PT2 archive",
                    compiler,
                    {offline: build_s, **start_costs},
                    [note, size_note, no_grad],
                    mode=torch.no_grad,
                )
            )
            if written == "as written":
                continue
            # Copies: each its own code object, so no compiled graph is shared between them.
            dynamic = torch.compile(copy.deepcopy(converted), dynamic=True)
            results.append(
                Method(
                    f"torchao PT2E x86, {written}, compile dynamic",
                    {0: dynamic},
                    [archive],
                    "PT2 archive",
                    compiler,
                    {offline: build_s, **first_calls(dynamic)},
                    [
                        "one graph for every batch size (torch.compile(dynamic=True)); its "
                        "compile times are in this process, after the static compile",
                        no_grad,
                    ],
                    mode=torch.no_grad,
                )
            )
            inference = torch.compile(copy.deepcopy(converted), dynamic=False)
            results.append(
                Method(
                    f"torchao PT2E x86, {written}, compile static, inference_mode",
                    {0: inference},
                    [archive],
                    "PT2 archive",
                    compiler,
                    {offline: build_s, **first_calls(inference, torch.inference_mode)},
                    [
                        "compiled and called under torch.inference_mode(), as the service's "
                        "LoadedModel.predict_proba calls its models; compile times in this "
                        "process, after the other compiles"
                    ],
                )
            )
            lowered, lower_costs = {}, {}
            for b in BATCHES:
                with torch.no_grad():
                    lowered[b], seconds = timed(
                        lambda b=b, c=converted: lower_pt2e_quantized_to_x86(c, (example[:b],))
                    )
                lower_costs[f"lower to oneDNN ops, batch {b} (per start)"] = seconds
            results.append(
                Method(
                    f"torchao PT2E x86, {written}, lowered, no compile",
                    lowered,
                    [archive],
                    "PT2 archive",
                    version,
                    {offline: build_s, **lower_costs},
                    [
                        "lower_pt2e_quantized_to_x86: onednn.qconv_pointwise / "
                        "qlinear_pointwise ops run eagerly; one lowered graph per batch size",
                        no_grad,
                    ],
                    mode=torch.no_grad,
                )
            )
        except Exception as error:  # report the failure, measure the rest
            traceback.print_exc()
            results.append(Failure(name, f"{type(error).__name__}: {error}"))
    return results


# --- measurements ---------------------------------------------------------------------------


def score(method: Method, test_ids: torch.Tensor, labels: torch.Tensor, reference) -> torch.Tensor:
    """Accuracy and agreement with the fp32 baseline's labels; returns the predicted labels."""
    forward = method.forward(EVAL_BATCH)
    with method.mode():
        logits = torch.cat([forward(b).flatten() for b in padded_batches(test_ids, EVAL_BATCH)])
    predicted = (logits[: len(labels)] > 0).long()
    method.accuracy = float((predicted == labels).float().mean())
    if reference is not None:
        method.agreement = float((predicted == reference).float().mean())
    return predicted


def measure_latency(
    methods: list[Method], test_ids: torch.Tensor, repeats: int, block: int
) -> None:
    """Per batch size, methods take turns in blocks of ``block`` timed calls (two untimed
    calls open each block), until each has ``repeats`` timings: a load change from the
    other work on the machine then spreads over all methods instead of hitting one."""
    for batch in BATCHES:
        ids = test_ids[:batch].clone()  # not a view: compiled graphs guard on views' bases
        for method in methods:
            with method.mode():
                for _ in range(5):
                    method.forward(batch)(ids)
            method.timings[batch] = []
        while min(len(m.timings[batch]) for m in methods) < repeats:
            for method in methods:
                forward = method.forward(batch)
                with method.mode():
                    forward(ids)
                    forward(ids)
                    for _ in range(block):
                        start = time.perf_counter()
                        forward(ids)
                        method.timings[batch].append(time.perf_counter() - start)
        for method in methods:
            p50 = statistics.median(method.timings[batch]) * 1e3
            print(f"{method.name:<80} batch {batch:>2}: p50 {p50:8.3f} ms", file=sys.stderr)


# --- report ---------------------------------------------------------------------------------


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return " ".join(f for f in flags if "vnni" in f or f.startswith("amx")) or "none"
    return "unknown"


def pctl(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(
    args: argparse.Namespace,
    methods: list[Method],
    failures: list[Failure],
    n_test: int,
    n_calib: int,
    load: tuple[float, ...],
    elapsed: float,
) -> str:
    base = methods[0]
    p50 = {(m.name, b): statistics.median(m.timings[b]) for m in methods for b in BATCHES}
    lines = [
        "# Int8 quantization tooling for the sentiment CNN",
        "",
        f"Machine: {cpu_name()} ({os.cpu_count()} cores; VNNI/AMX flags: {cpu_flags()}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}.",
        f"Command: `{args.command}` ({elapsed / 60:.1f} min).",
        f"Service int8 as measured: service/models/quantize.py sha256 {_QUANTIZE_SHA[:12]} "
        f"(as imported), {methods[1].files[0].name} sha256 {_sha256(methods[1].files[0])[:12]}.",
        "Load average (1 min) at start / before the latency runs / end: "
        + " / ".join(f"{x:.2f}" for x in load)
        + ".",
        *(
            [
                "",
                f"**Other work shared the {os.cpu_count()} cores during this run** (load "
                "average above the core count). Every method runs on two threads that must "
                "both get a core: while another process holds one, a call waits for the next "
                "time slice. The p50 and p90 figures are inflated by that, unevenly between "
                "methods and between runs (the torchao compile rows run graphs of the same "
                "kernels, yet their p50 differ); the min columns (the fastest run of each "
                "method) are the closest to an idle machine and are the ones to compare.",
            ]
            if max(load) > (os.cpu_count() or 1)
            else []
        ),
        "",
        f"Accuracy: {n_test:,} test reviews (seeded sample of the test split), the same for "
        f"every method; agreement = share of reviews given the same label as fp32. "
        f"Calibration: {n_calib:,} training reviews (seeded shuffle), the same for every "
        "method. Latency: one forward pass on token ids (tokenization excluded), median "
        f"(p50), fastest (min) and 90th percentile over >= {args.repeats} timed runs per "
        "method after "
        f"warm-up, methods taking turns in blocks of {args.block}; reviews/s = batch / p50. "
        "Size: the model file(s) only (vocab.json, 220 KB, is the same for all). "
        "ONNX Runtime: intra_op_num_threads=2, inter_op_num_threads=1, all graph optimizations.",
        "",
        "| method | accuracy | Δ vs fp32 (pp) | agreement | size (bytes) | "
        "b32 p50 ms | b32 min ms | b32 p90 ms | b32 reviews/s | b32 x fp32 | "
        "b1 p50 ms | b1 min ms | b1 reviews/s | b1 x fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        b32, b1 = p50[(m.name, 32)], p50[(m.name, 1)]
        lines.append(
            f"| {m.name} | {m.accuracy:.4f} | {(m.accuracy - base.accuracy) * 100:+.2f} | "
            f"{m.agreement:.4f} | {m.size:,} | {b32 * 1e3:.2f} | {min(m.timings[32]) * 1e3:.2f} | "
            f"{pctl(m.timings[32], 90) * 1e3:.2f} | {32 / b32:,.0f} | "
            f"{p50[(base.name, 32)] / b32:.2f} | {b1 * 1e3:.3f} | {min(m.timings[1]) * 1e3:.3f} | "
            f"{1 / b1:,.0f} | {p50[(base.name, 1)] / b1:.2f} |"
        )
    for f in failures:
        lines.append(f"| {f.name} | failed: {f.error} |" + " |" * 12)
    lines += [
        "",
        "Start-up and one-off costs, artifact format, runtime needs:",
        "",
        "| method | format | extra runtime dependency | costs (s) |",
        "|---|---|---|---|",
    ]
    for m in methods:
        costs = "; ".join(f"{k}: {v:.2f}" for k, v in m.costs.items())
        lines.append(f"| {m.name} | {m.artifact} | {m.runtime} | {costs} |")
    lines += ["", "Notes per method:", ""]
    for m in methods:
        for note in m.notes:
            lines.append(f"- {m.name}: {note}")
    lines += ["", "## Conclusion", "", *conclusion(methods, p50, n_test), ""]
    return "\n".join(lines)


def conclusion(methods: list[Method], p50: dict, n_test: int) -> list[str]:
    """The figures that decide, stated from this run's numbers."""
    base, ours = methods[0], methods[1]
    by_name = {m.name: m for m in methods}
    rps = {key: key[1] / value for key, value in p50.items()}

    def speed(m: Method, b: int) -> str:
        return f"{rps[(m.name, b)]:,.0f} reviews/s"

    def ms(m: Method, b: int) -> str:
        return f"{p50[(m.name, b)] * 1e3:.2f} / {min(m.timings[b]) * 1e3:.2f} ms"

    families = {
        "fp32 eager": [base],
        "service int8": [ours],
        "ONNX Runtime int8": [m for m in methods if m.name.startswith("ORT int8")],
        "torchao, compiled": [
            m for m in methods if m.name.startswith("torchao PT2E x86, nn.ReLU, compile")
        ],
    }
    lines = []
    for b in BATCHES:
        parts = []
        for family, members in families.items():
            if members:
                best = min(members, key=lambda m: min(m.timings[b]))
                label = family if len(members) == 1 else f"{family} ({best.name})"
                parts.append(f"{label} {ms(best, b)}")
        fastest = max(methods, key=lambda m: rps[(m.name, b)])
        quickest = min(methods, key=lambda m: min(m.timings[b]))
        versus = "" if fastest is ours else f" (service int8: {speed(ours, b)})"
        lines.append(
            f"- Batch {b}, p50 / fastest run: {'; '.join(parts)}. Highest p50 throughput: "
            f"{fastest.name}, {speed(fastest, b)}{versus}; fastest single run: {quickest.name}."
        )
    others = [m for members in list(families.values())[2:] for m in members]
    if others:
        verdicts = []
        for b in BATCHES:
            rival = min(others, key=lambda m: min(m.timings[b]))
            ratio = min(ours.timings[b]) / min(rival.timings[b])
            if ratio > 1.1:
                verdicts.append(
                    f"at batch {b} {rival.name} is {ratio:.2f}x faster than the service int8"
                )
            elif ratio >= 1:
                verdicts.append(
                    f"at batch {b} the service int8 is within 10% of the fastest alternative "
                    f"({rival.name}, {ratio:.2f}x)"
                )
            else:
                verdicts.append(
                    f"at batch {b} the service int8 is {1 / ratio:.2f}x faster than the fastest "
                    f"alternative ({rival.name})"
                )
        lines.append(
            "- Speed verdict, by fastest runs (the least disturbed by the other work): "
            + "; ".join(verdicts)
            + "."
        )
    quantized = [m for m in methods if m is not base and "fp32" not in m.name]
    deltas = ", ".join(f"{m.name} {(m.accuracy - base.accuracy) * 100:+.2f} pp" for m in quantized)
    spread = max(m.accuracy for m in quantized) - min(m.accuracy for m in quantized)
    lines.append(
        f"- Accuracy on {n_test:,} test reviews: fp32 {base.accuracy:.4f}; int8 deltas: "
        f"{deltas}. The int8 methods are within {spread * 100:.2f} pp "
        f"({round(spread * n_test)} reviews) of each other."
    )
    lines.append(
        f"- Service int8: one safetensors file ({ours.size:,} bytes, embedding included in "
        "int8) like every other artifact of the service, no runtime beyond torch, any batch "
        f"size, loads in {ours.costs['load (per start)']:.2f} s."
    )
    ort_int8 = [m for m in methods if m.name.startswith("ORT int8")]
    if ort_int8:
        best = max(ort_int8, key=lambda m: rps[(m.name, 32)])
        lines.append(
            f"- ONNX Runtime int8 ({best.name}): {best.size:,} bytes of ONNX protobuf, a second "
            f"model format exported from the torch module and a second inference runtime "
            f"({best.runtime}) in the serving process; session start "
            f"{best.costs['session (per start)']:.2f} s; any batch size."
        )
    static = by_name.get("torchao PT2E x86, nn.ReLU, compile static")
    written = by_name.get("torchao PT2E x86, as written, compile static")
    if static:
        cold = static.costs.get("compile + first call, batch 32, cold cache (per start)", 0)
        warm = static.costs.get("compile + first call, batch 32, warm cache (per start)", 0)
        load = static.costs.get("import + load, warm cache (per start)", 0)
        lines.append(
            "- torchao PT2E: the X86InductorQuantizer quantizes a Conv1d only when a "
            "``nn.ReLU`` module follows it"
            + (
                " (the model as written, with ``torch.relu``, gets int8 Linear layers only "
                f"and runs a batch of 32 in {ms(written, 32)}, p50 / fastest)"
                if written
                else ""
            )
            + f"; the embedding stays fp32, so the artifact is {static.size:,} bytes; "
            f"serving needs torchao plus a C++ compiler on the server, and each start imports "
            f"torch + torchao and loads the program ({load:.1f} s), then compiles "
            f"({cold:.1f} s at batch 32 on an empty Inductor cache, {warm:.1f} s on a warm "
            f"one, plus each other batch size with static shapes)."
        )
    inference = by_name.get("torchao PT2E x86, nn.ReLU, compile static, inference_mode")
    if static and inference:
        lines.append(
            "- torchao under ``torch.inference_mode()`` (how the service calls its models): "
            f"the same graph compiled and called there runs {ms(inference, 1)} (p50 / fastest) "
            f"at batch 1 and {ms(inference, 32)} at batch 32, against {ms(static, 1)} and "
            f"{ms(static, 32)} under ``torch.no_grad()``."
        )
    return lines


def main() -> int:
    # A fresh Inductor cache, so the torch.compile times are cold-start times (Inductor reads
    # the variable whenever it looks up its cache, so setting it here is early enough).
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_WORKDIR / "inductor"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=5000, help="test reviews (0: all)")
    parser.add_argument("--calibration", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=60, help="timed runs per method (>= 30)")
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/quantization_choice.md")
    )
    args = parser.parse_args()
    if args.calibration % CALIB_BATCH or args.repeats < 30:
        parser.error(f"--calibration must be a multiple of {CALIB_BATCH}, --repeats >= 30")
    tunables = os.environ.get("GLIBC_TUNABLES")
    args.command = " ".join(
        [
            *([f"GLIBC_TUNABLES={tunables}"] if tunables else []),
            ".venv/bin/python -m benchmarks.quantization_choice",
            *sys.argv[1:],
        ]
    )
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    test, calib = load_reviews(args.data, args.limit, args.calibration)
    vectorizer = Vectorizer.load(ARTIFACTS / "sentiment-cnn" / VOCAB)
    test_ids = vectorizer([t for t, _ in test])
    calib_ids = vectorizer([t for t, _ in calib])
    labels = torch.tensor([label for _, label in test])
    print(
        f"{len(test)} test reviews ({int(labels.sum())} positive), {len(calib)} calibration",
        file=sys.stderr,
    )
    base, ours, fp32 = torch_methods(calib_ids)

    methods: list[Method] = [base, ours]
    failures: list[Failure] = []
    try:
        for item in ort_methods(fp32.module, calib_ids, threads=2):
            (methods if isinstance(item, Method) else failures).append(item)
    except Exception as error:
        traceback.print_exc()
        failures.append(Failure("ORT", f"{type(error).__name__}: {error}"))
    try:
        for item in torchao_methods(fp32.module, calib_ids):
            (methods if isinstance(item, Method) else failures).append(item)
    except Exception as error:
        traceback.print_exc()
        failures.append(Failure("torchao PT2E", f"{type(error).__name__}: {error}"))

    reference = None
    for method in methods:
        predicted = score(method, test_ids, labels, reference)
        reference = predicted if reference is None else reference
        print(f"{method.name:<80} accuracy {method.accuracy:.4f}", file=sys.stderr)
    base.agreement = 1.0
    load_timing = os.getloadavg()[0]
    measure_latency(methods, test_ids, args.repeats, args.block)

    text = report(
        args,
        methods,
        failures,
        len(test),
        len(calib),
        (load_start, load_timing, os.getloadavg()[0]),
        time.perf_counter() - started,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(_WORKDIR, ignore_errors=True)
