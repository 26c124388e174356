"""`python -m diyt predict|export`: use a model bundle outside the pipeline."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from diyt.errors import VERBOSE_ENV, ConfigError, user_errors

EXIT_CODES = """exit codes:
  0  done: every input image scored (predict); the graph written and verified (export)
  1  predict: some input images could not be read (each named on stderr); the others were scored and written
  2  nothing done: bad arguments, no input image found, an unusable model bundle or ONNX file, or an
     output path that cannot be written
set DIYT_VERBOSE=1 (or pass --verbose) to see a full traceback with an error."""


if TYPE_CHECKING:
    import torch


def pick_device(kind: str) -> torch.device:
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device auto or cpu")
    return torch.device("cuda" if kind != "cpu" and torch.cuda.is_available() else "cpu")


def writable_folder(path: Path) -> None:
    """Create the output folder, or say why it cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--out {path}: a file is in the way; name a folder") from None
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot create it ({err.strerror})") from None
    try:  # before any scoring: a folder that exists but cannot be written to
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write to it ({err.strerror})") from None


def run_predict(args: argparse.Namespace) -> int:
    from diyt.bundle import load_bundle
    from diyt.predict import OnnxScorer, TorchScorer, find_inputs, predict

    device = pick_device(args.device)
    bundle = load_bundle(args.model, device)
    paths = find_inputs(args.input, exclude=args.out)
    writable_folder(args.out)
    if args.onnx is not None:
        from diyt.export import check_onnx_matches

        check_onnx_matches(args.onnx, bundle)
        scorer = OnnxScorer(args.onnx, device)
    else:
        scorer = TorchScorer(bundle, device)
    summary = predict(paths, bundle, scorer, args.out, fmt=args.format, batch_size=args.batch_size,
                      heatmaps=not args.no_heatmaps, progress=not args.quiet)
    scored = [p for p in summary.predictions if p.score is not None]
    anomalous = sum(p.verdict == "anomalous" for p in scored)
    print(f"{len(scored)} scored ({anomalous} anomalous, {len(scored) - anomalous} normal), "
          f"{len(summary.unreadable)} unreadable -> {summary.results}")
    return 1 if summary.unreadable else 0


def run_export(args: argparse.Namespace) -> int:
    from diyt.bundle import load_bundle
    from diyt.export import MIN_OPSET, OPSET, export_onnx

    if args.opset is not None and not MIN_OPSET <= args.opset <= OPSET:
        raise ConfigError(f"--opset {args.opset}: DiyT exports opsets {MIN_OPSET} to {OPSET}")
    bundle = load_bundle(args.model, "cpu")
    out = args.out or Path(str(args.model).rstrip("/\\") + ".onnx")
    if out.is_dir():
        raise ConfigError(f"--out {out}: a folder; name the .onnx file to write")
    export_onnx(bundle, out, opset=args.opset or OPSET, verify=not args.no_verify)
    print(f"{out}: ONNX graph of {bundle.category} (input 'image' (N, 3, {bundle.preprocess.image_size}, "
          f"{bundle.preprocess.image_size}) RGB in [0, 1]; outputs 'score' (N,), 'anomaly_map' (N, "
          f"{bundle.out_size}, {bundle.out_size}); image threshold {bundle.thresholds.image:.6g})")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="diyt", description=__doc__, epilog=EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show the full traceback with an error")
    commands = top.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "predict", help="score images with a model bundle", epilog=EXIT_CODES, parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score images with a model bundle (bundles/<dataset>/<category>): writes "
                    "OUT/predictions.jsonl (or .csv) with path, score and verdict per image (anomalous when the "
                    "score is at or above the bundle's image threshold) and OUT/heatmaps/*.png.")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model bundle folder")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image files, folders (searched recursively) or quoted glob patterns")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="results file format")
    p.add_argument("--batch-size", type=_positive, default=32, metavar="N", help="images per forward pass")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                   help="score with onnxruntime and this graph exported from the same bundle instead of PyTorch")
    p.add_argument("--no-heatmaps", action="store_true", help="write the results file only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_predict)

    e = commands.add_parser(
        "export", help="export a model bundle's whole scoring as an ONNX graph", epilog=EXIT_CODES, parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export the multi-mask scoring of a model bundle (passes, selection, error, upsampling, "
                    "smoothing, image score) as one ONNX graph with a dynamic batch axis.")
    e.add_argument("--model", type=Path, required=True, metavar="DIR", help="model bundle folder")
    e.add_argument("--format", choices=("onnx",), default="onnx")
    e.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: DIR.onnx beside the bundle")
    e.add_argument("--opset", type=int, default=None,
                   help="ONNX opset version, 18 or newer (default: 23, whose fused Attention runs faster)")
    e.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check after export")
    e.set_defaults(run=run_export)
    return top


@user_errors
def _run(args: argparse.Namespace) -> int:
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
