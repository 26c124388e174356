"""Speed of `diyt predict` on the CPU: PyTorch eager against onnxruntime on the exported graph, in one run.

Three figures per engine, with the same thread count for each: scoring throughput (images/s at --batch-size on
already decoded images: the model, the K passes, error, upsampling, smoothing, score; best round), batch-1
latency (median of single-image calls) and end-to-end `predict` throughput (decoding, scoring, heat-map PNGs,
results file; best round). The engines alternate round by round, so load from other processes on a shared
machine falls on all. A third row runs the export's own module (`diyt.export.ScoringGraph`) in eager PyTorch,
which separates onnxruntime's share of the speed-up from the graph's (its separable blur). The scoring FLOPs
per image (backbone, K passes, blur) against a matmul measured in the same run give the inference FLOP
utilisation. Prints a table, asserts nothing. The goal is onnxruntime at least 1.5x eager.

Usage: python benchmarks/predict_speed.py [--model bundles/synthetic/weave] [--input 'GLOB'] [--onnx FILE]
       [--batch-size 32] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diyt.bundle import load_bundle
from diyt.export import ScoringGraph, export_onnx
from diyt.model import forward_flops
from diyt.predict import OnnxScorer, Scorer, TorchScorer, find_inputs, predict
from roofline import matmul_flops


class GraphScorer:
    """The exported graph's module run in PyTorch eager: tells the runtime's share of a speed-up from the graph's."""

    def __init__(self, bundle) -> None:
        self.graph = ScoringGraph.from_bundle(bundle).eval()

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, anomaly_map = self.graph(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
        return score.numpy(), anomaly_map.numpy()


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, object], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each function, alternating between them round by round, so that other load on a shared
    machine falls on every engine alike; warm-up rounds dropped."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            t = seconds(fn)
            if i >= warmup:
                times[name].append(t)
    return times


def measure(engines: dict[str, Scorer], pixels: np.ndarray, paths: list[Path], bundle, batch_size: int,
            reps: int) -> list[dict]:
    """Best throughput at `batch_size`, median batch-1 latency and best end-to-end predict throughput per engine."""
    batch = pixels[:batch_size]
    throughput = interleaved({n: (lambda s=s: s(batch)) for n, s in engines.items()}, reps)
    latency = interleaved({n: (lambda s=s: s(pixels[:1])) for n, s in engines.items()}, 5 * reps, warmup=2)
    with tempfile.TemporaryDirectory() as out:
        end_to_end = interleaved({n: (lambda s=s, n=n: predict(paths, bundle, s, Path(out) / n.replace(" ", "_"),
                                                               batch_size=batch_size, progress=False))
                                  for n, s in engines.items()}, max(1, reps // 2), warmup=0)
    return [{"engine": name, "throughput": len(batch) / min(throughput[name]),
             "latency_ms": 1e3 * statistics.median(latency[name]), "predict": len(paths) / min(end_to_end[name])}
            for name in engines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("bundles/synthetic/weave"))
    parser.add_argument("--input", default="data/prepared/synthetic/weave/test/*/*.png")
    parser.add_argument("--onnx", type=Path, default=None, help="an exported graph (default: export one now)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=6, help="interleaved rounds per figure")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    roof = matmul_flops(torch.device("cpu"), n=1024)
    bundle = load_bundle(args.model, "cpu")
    paths = find_inputs([args.input])
    pixels = np.stack([bundle.preprocess.load(p)[0] for p in paths[: args.batch_size]])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or export_onnx(bundle, Path(tmp) / "model.onnx")
        engines = {"pytorch eager": TorchScorer(bundle, torch.device("cpu")),
                   "onnxruntime": OnnxScorer(onnx_path, threads=args.threads),
                   "eager, graph": GraphScorer(bundle)}
        rows = measure(engines, pixels, paths, bundle, args.batch_size, args.reps)
        flops = forward_flops(engines["eager, graph"].graph, torch.zeros(1, 3, *pixels.shape[1:3]))
    roof = max(roof, matmul_flops(torch.device("cpu"), n=1024))  # the least disturbed of the two

    arch = bundle.model.arch
    print(f"\n{bundle.path}: {arch.image_size} px, patch {arch.patch_size}, width {arch.embed_dim}, depth "
          f"{arch.depth}+{arch.decoder_depth}; K={bundle.scoring.num_masks} R={bundle.scoring.repeats}; "
          f"map {bundle.out_size} px; CPU, {args.threads} threads, torch {torch.__version__}")
    print(f"scoring: {flops / 1e9:.2f} GFLOP per image (backbone, {bundle.scoring.num_masks} passes, blur); "
          f"matmul 1024^3 float32: {roof / 1e9:.1f} GFLOP/s")
    print(f"{'engine':<13} {'scoring img/s (batch ' + str(len(pixels)) + ')':>26} {'MFU':>6} "
          f"{'batch-1 latency ms':>19} {'predict img/s (' + str(len(paths)) + ' files)':>26}")
    for row in rows:
        print(f"{row['engine']:<13} {row['throughput']:>26.1f} {flops * row['throughput'] / roof:>6.1%} "
              f"{row['latency_ms']:>19.1f} {row['predict']:>26.1f}")
    eager, ort, graph = rows
    print(f"onnxruntime / eager: scoring {ort['throughput'] / eager['throughput']:.2f}x, batch-1 latency "
          f"{eager['latency_ms'] / ort['latency_ms']:.2f}x, predict {ort['predict'] / eager['predict']:.2f}x "
          "(goal: at least 1.5x)")
    print(f"onnxruntime / the same graph in eager: scoring {ort['throughput'] / graph['throughput']:.2f}x "
          "('eager, graph' runs the export's module: separable blur, patches embedded once)")


if __name__ == "__main__":
    main()
