"""onnxruntime latency of our int8 ONNX export against our fp32 export and against quantize_static.

For each model (torchvision, random weights, BatchNorm statistics
re-estimated on random batches), at batch 1 with 2 intra-op threads:

- ours fp32: our fx-to-ONNX emitter on the traced model;
- ours int8: our quantization (calibrated on the calibration inputs) and
  the QDQ export;
- quantize_static: onnxruntime's quantizer on our fp32 ONNX file with its
  best settings for x86: ``quant_pre_process`` first, QuantFormat.QDQ,
  uint8 activations, int8 per-channel weights, MinMax calibration on the
  same calibration inputs.

It also times the export of resnet50: our emitter against torch.onnx.export
(the default exporter first; the TorchScript exporter, ``dynamo=False``,
when the default fails, which the table says).

Each model's three variants are timed in ``--rounds`` rounds, each variant
in a fresh process, back to back within a round; the speed-ups are medians
of the ratios within each round (see ``render``).

Run: ``.venv/bin/python -m benchmarks.onnx_speed`` (resnet18 and mobilenet_v2
at 224x224, about 1 minute on 2 cores), ``--all`` for the 17 classifiers
(7 to 12 minutes), ``--json`` for one JSON object instead of the table.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

DEFAULT_MODELS = ("resnet18", "mobilenet_v2")
ALL_MODELS = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0",
    "squeezenet1_0", "densenet121", "googlenet", "inception_v3", "regnet_y_400mf", "mnasnet0_5", "alexnet",
    "vgg11", "convnext_tiny", "vit_b_16", "swin_t",
)  # fmt: skip
MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
EXPORT_TIME_MODEL = "resnet50"
OPSET = 17
THREADS = 2
WARMUP = 5
# QLinearConv's inputs before the optional int32 bias.
QLINEAR_CONV_INPUTS_WITHOUT_BIAS = 8
CALIBRATION_BATCHES = 4
CALIBRATION_BATCH_SIZE = 2


@dataclass
class ModelTiming:
    """Median latency (ms) of one model's three ONNX variants and the int8 kernel counts."""

    model: str
    image_size: int
    fp32_ms: float
    int8_ms: float
    quantize_static_ms: float
    int8_kernels: int
    float_compute_nodes: int
    quantize_static_int8_kernels: int
    quantize_static_float_compute_nodes: int
    # onnxruntime's optimized graphs of both int8 models run the same kernels (in any order).
    same_kernels_as_quantize_static: bool
    # Medians over the rounds of the ratios paired within each round.
    speedup_vs_fp32: float = 0.0
    speedup_vs_quantize_static: float = 0.0
    # 25th and 75th percentiles of the paired ours-vs-quantize_static ratios.
    speedup_vs_quantize_static_iqr: tuple[float, float] = (0.0, 0.0)


@dataclass
class ExportTiming:
    model: str
    ours_s: float
    torch_onnx_export_s: float
    torch_exporter: str


@dataclass
class Report:
    cpu: str
    versions: dict[str, str]
    threads: int
    rounds: int
    runs: int
    models: list[ModelTiming] = field(default_factory=list)
    export: ExportTiming | None = None


def build_model(name: str, image_size: int, seed: int = 0) -> nn.Module:
    """Random-weight torchvision model with BatchNorm statistics from random batches, in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {}))
    if name == "vit_b_16":
        nn.init.normal_(model.heads.head.weight, std=0.02)
    batchnorms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if batchnorms:
        for module in batchnorms:
            module.reset_running_stats()
            module.momentum = None
        model.train()
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(2, 3, image_size, image_size, generator=generator))
    return model.eval()


def quantize_ours(fp32: torch.fx.GraphModule, input_shape: list[int], calibration: list[np.ndarray]) -> torch.fx.GraphModule:
    """Our default qconfig (uint8 activations, int8 per-channel weights), calibrated and converted."""
    from pipeline.schema import fill_defaults, load_schema, stage_schema_path
    from stages.quant.calibration import calibrate
    from stages.quant.convert import convert
    from stages.quant.observe import insert_observers
    from stages.quant.qconfig import build_qconfig

    params = fill_defaults(load_schema(stage_schema_path("prepare-qconfig")), {})
    qconfig = build_qconfig(fp32, input_shape, params)
    observed, _ = insert_observers(fp32, qconfig)
    calibrate(observed, [torch.from_numpy(batch) for batch in calibration])
    int8, _ = convert(observed)
    return int8.eval()


def quantize_static_best(fp32_path: Path, work: Path, calibration: list[np.ndarray]) -> Path:
    """onnxruntime's static quantizer with the settings its documentation recommends for x86."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": sample[None]} for batch in calibration for sample in batch])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    preprocessed = work / "preprocessed.onnx"
    quantized = work / "quantize_static.onnx"
    quant_pre_process(str(fp32_path), str(preprocessed))
    quantize_static(
        str(preprocessed),
        str(quantized),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return quantized


def kernel_counts(path: Path, work: Path) -> tuple[int, int, list[tuple[Any, ...]]]:
    """Return the int8 kernel count, the float compute node count and the kernel signature of the optimized graph."""
    from stages.onnx.parity import count_int8_kernels, float_compute_nodes, kernel_signature, optimized_graph

    count, histogram = count_int8_kernels(path, work)
    return count, float_compute_nodes(histogram), kernel_signature(optimized_graph(path, work))


def time_model(name: str, image_size: int, rounds: int, runs: int, work: Path) -> ModelTiming:
    from stages.onnx.emitter import export_graph_module
    from stages.profiling.onnx_timing import time_onnx_rounds
    from stages.tracing.tracer import trace_model

    input_shape = [1, 3, image_size, image_size]
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal([CALIBRATION_BATCH_SIZE, *input_shape[1:]]).astype(np.float32) for _ in range(CALIBRATION_BATCHES)]
    sample = rng.standard_normal(input_shape).astype(np.float32)
    example = torch.from_numpy(sample)

    fp32 = trace_model(build_model(name, image_size), input_shape=input_shape)
    fp32_path = work / f"{name}_fp32.onnx"
    onnx.save(export_graph_module(fp32, example, OPSET), str(fp32_path))

    int8 = quantize_ours(fp32, input_shape, calibration)
    int8_path = work / f"{name}_int8.onnx"
    with torch.no_grad():
        onnx.save(export_graph_module(int8, example, OPSET), str(int8_path))

    static_path = quantize_static_best(fp32_path, work, calibration)

    int8_kernels, float_nodes, int8_ops = kernel_counts(int8_path, work)
    static_kernels, static_float, static_ops = kernel_counts(static_path, work)
    per_round = time_onnx_rounds({"fp32": fp32_path, "int8": int8_path, "static": static_path}, 1, THREADS, WARMUP, runs, rounds)
    # One median per fresh process; the three variants of a round ran back to back.
    medians = {variant: np.array([np.median(chunk) * 1000.0 for chunk in chunks]) for variant, chunks in per_round.items()}
    versus_static = medians["static"] / medians["int8"]
    timing = ModelTiming(
        model=name,
        image_size=image_size,
        fp32_ms=float(np.median(medians["fp32"])),
        int8_ms=float(np.median(medians["int8"])),
        quantize_static_ms=float(np.median(medians["static"])),
        int8_kernels=int8_kernels,
        float_compute_nodes=float_nodes,
        quantize_static_int8_kernels=static_kernels,
        quantize_static_float_compute_nodes=static_float,
        same_kernels_as_quantize_static=_kernel_multiset(int8_ops) == _kernel_multiset(static_ops),
        speedup_vs_fp32=float(np.median(medians["fp32"] / medians["int8"])),
        speedup_vs_quantize_static=float(np.median(versus_static)),
        speedup_vs_quantize_static_iqr=(float(np.percentile(versus_static, 25)), float(np.percentile(versus_static, 75))),
    )
    return timing


def _kernel_multiset(signature: list[tuple[Any, ...]]) -> list[str]:
    """Return the sorted node signatures, with a QLinearConv's optional bias input left out.

    Our export drops a bias that quantizes to all zeros, which saves the
    add and is the same kernel otherwise.
    """
    entries = []
    for domain, op_type, attributes, inputs in signature:
        if op_type == "QLinearConv":
            inputs = inputs[:QLINEAR_CONV_INPUTS_WITHOUT_BIAS]
        entries.append(repr((domain, op_type, attributes, inputs)))
    return sorted(entries)


def time_export(name: str, image_size: int) -> ExportTiming:
    """Seconds to produce the ONNX bytes of the fp32 model: our emitter vs torch.onnx.export."""
    from stages.onnx.emitter import export_graph_module
    from stages.tracing.tracer import trace_model

    model = build_model(name, image_size)
    example = torch.randn(1, 3, image_size, image_size)
    graph_module = trace_model(model)

    start = time.perf_counter()
    export_graph_module(graph_module, example, OPSET).SerializeToString()
    ours = time.perf_counter() - start

    exporter = "torch.onnx.export (default)"
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), io.BytesIO(), opset_version=OPSET)
    except Exception as exc:  # the default (dynamo) exporter needs onnxscript
        exporter = f"torch.onnx.export(dynamo=False); the default failed: {type(exc).__name__}"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), io.BytesIO(), opset_version=OPSET, dynamo=False)
    theirs = time.perf_counter() - start
    return ExportTiming(model=name, ours_s=ours, torch_onnx_export_s=theirs, torch_exporter=exporter)


def render(report: Report) -> str:
    lines = [
        f"CPU: {report.cpu}",
        "versions: " + ", ".join(f"{name} {version}" for name, version in report.versions.items()),
        f"onnxruntime CPU, batch 1, {report.threads} threads, {report.runs} timed runs per variant "
        f"in {report.rounds} rounds; each round times the three variants back to back, each in a fresh process",
        "",
        f"{'model':<20} {'size':>4} {'fp32 ms':>9} {'int8 ms':>9} {'q_static ms':>11} "
        f"{'int8/fp32':>9} {'ours/q_static':>13} {'IQR':>11} {'int8 kernels':>12} {'float nodes':>11} {'q_static float':>14} "
        f"{'same kernels':>12}",
    ]
    for row in report.models:
        low, high = row.speedup_vs_quantize_static_iqr
        lines.append(
            f"{row.model:<20} {row.image_size:>4} {row.fp32_ms:>9.2f} {row.int8_ms:>9.2f} {row.quantize_static_ms:>11.2f} "
            f"{row.speedup_vs_fp32:>8.2f}x {row.speedup_vs_quantize_static:>12.2f}x {f'{low:.2f}-{high:.2f}':>11} "
            f"{row.int8_kernels:>12} {row.float_compute_nodes:>11} {row.quantize_static_float_compute_nodes:>14} "
            f"{'yes' if row.same_kernels_as_quantize_static else 'no':>12}"
        )
    lines += [
        "ms: median over the rounds of each process's median latency.",
        "int8/fp32: how many times faster our int8 runs than our fp32; ours/q_static: than quantize_static's int8. "
        "Both are medians over the rounds of the ratio within each round, which cancels the machine-wide slowdowns "
        "that hit all three variants of a round; IQR: the middle half of the rounds' ours/q_static ratios.",
        "same kernels: onnxruntime's optimized graphs of our int8 and quantize_static's int8 have the same nodes "
        "(op, attributes, input types and shapes, a QLinearConv with or without its bias; "
        "independent branches may run in another order), "
        "so their speed differs only by measurement noise.",
    ]
    if report.export is not None:
        export = report.export
        lines += [
            "",
            f"export of {export.model} (fp32, opset {OPSET}): ours {export.ours_s:.2f} s, "
            f"{export.torch_exporter} {export.torch_onnx_export_s:.2f} s "
            f"({export.torch_onnx_export_s / export.ours_s:.1f}x ours)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="time all 17 torchvision classifiers")
    parser.add_argument("--models", nargs="+", help="time these torchvision models")
    parser.add_argument("--image-size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--rounds", type=int, default=12, help="fresh processes per model and variant (default 12)")
    parser.add_argument("--runs", type=int, default=60, help="timed runs per model and variant, over all rounds (default 60)")
    parser.add_argument("--no-export", action="store_true", help="skip the export-time comparison")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)

    from stages.profiling.cpu import describe_cpu, runtime_versions

    torch.set_num_threads(THREADS)
    names = ALL_MODELS if args.all else tuple(args.models or DEFAULT_MODELS)
    report = Report(cpu=describe_cpu(), versions=runtime_versions(), threads=THREADS, rounds=args.rounds, runs=args.runs)
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            size = max(args.image_size, 75) if name == "inception_v3" else args.image_size
            report.models.append(time_model(name, size, args.rounds, args.runs, Path(folder)))
            print(f"{name}: done", file=sys.stderr, flush=True)
    if not args.no_export:
        report.export = time_export(EXPORT_TIME_MODEL, args.image_size)

    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
