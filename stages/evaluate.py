"""DVC stage: anomaly maps, thresholds, metrics, curves and figures for one category, and its model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from diyt.bundle import load_trained, write_bundle
from diyt.config import load_params
from diyt.errors import user_errors
from diyt.eval.evaluate import evaluate_category
from diyt.eval.outputs import write_evaluation
from diyt.model.map_cache import MapCache
from diyt.report.timings import stage_timer
from diyt.train.distributed import pick_device


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>/<category>")
    parser.add_argument("--model", type=Path, required=True, help="models/<dataset>/<category>")
    parser.add_argument("--metrics", type=Path, required=True, help="reports/<dataset>/<category>/metrics.json")
    parser.add_argument("--plots", type=Path, required=True, help="reports/<dataset>/<category>/plots")
    parser.add_argument("--figures", type=Path, required=True, help="reports/<dataset>/<category>/figures")
    parser.add_argument("--bundle", type=Path, required=True,
                        help="bundles/<dataset>/<category>: the model bundle for `diyt predict|export`")
    parser.add_argument("--feature-cache", type=Path, default=None,
                        help="the training stages' folder of backbone train maps, for the kNN memory bank")
    parser.add_argument("--timing", type=Path, default=None, help="reports/timings/<stage>.json: wall time")
    args = parser.parse_args(argv)
    with stage_timer(args.timing, f"evaluate@{args.data.name}") as parts:
        params = load_params(args.params)
        device = pick_device(params.train.device)
        trained = load_trained(args.model, device)
        ev = evaluate_category(trained.model, args.data, trained.normalize, params.eval, device,
                               map_cache=MapCache(args.feature_cache))
        write_evaluation(ev, args.metrics, args.plots, args.figures)
        write_bundle(args.bundle, args.model, ev, params.eval, args.data)
        if ev.level_seconds is not None:
            parts["error_level_fit_seconds"] = ev.level_seconds
        if ev.whitening_seconds is not None:
            parts["whitening_fit_seconds"] = ev.whitening_seconds
        if ev.head_seconds is not None:
            parts["defect_head_fit_seconds"] = ev.head_seconds
        m = ev.metrics
        print(f"{args.data.name}: image AUROC {m['image_auroc']:.3f}  AUPRO {m['aupro']:.3f}  "
              f"pixel AUROC {m['pixel_auroc']:.3f}  F1 {m['f1']:.3f}")


if __name__ == "__main__":
    main()
