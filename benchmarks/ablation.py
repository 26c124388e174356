"""The ablation as DVC experiments: a plain MAE, each seed feature added alone, and the full DiyT.

Queues one `dvc exp run` per row, runs the queue, and collects every row's metrics from `dvc exp show` into a
JSON file that the report's ablation section reads:

    {"dataset": "synthetic", "rows": [{"name": ..., "overrides": {...}, "image_auroc": ..., "aupro": ...,
                                       "pixel_auroc": ..., "f1": ...}, ...]}

Usage (from the project root, with the baseline committed):
    python benchmarks/ablation.py                     # queue, run and collect
    python benchmarks/ablation.py --collect-only      # collect the experiments already run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PLAIN = {"model.norm": "layernorm", "model.masking": "random", "model.pos_embed": "sincos",
         "model.aggregate_layers": "[]"}
FULL = {"model.norm": "dyt", "model.masking": "block", "model.pos_embed": "hybrid",
        "model.aggregate_layers": "[2,4]"}
ROWS: dict[str, dict[str, str]] = {
    "plain-mae": PLAIN,
    "plain+dyt": {**PLAIN, "model.norm": "dyt"},
    "plain+block-masking": {**PLAIN, "model.masking": "block"},
    "plain+hybrid-pos": {**PLAIN, "model.pos_embed": "hybrid"},
    "plain+aggregation": {**PLAIN, "model.aggregate_layers": "[2,4]"},
    "diyt-full": FULL,
}
KEYS = ("image_auroc", "aupro", "pixel_auroc", "f1")


def dvc(*args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: dvc {' '.join(args)} failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def queue() -> None:
    for name, overrides in ROWS.items():
        sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
        dvc("exp", "run", "--queue", "-n", name, *sets)
        print(f"queued {name}")


def _runs(table: object) -> Iterator[dict]:
    """Every experiment entry (a dict with a name and data) anywhere in `dvc exp show --json`."""
    if isinstance(table, dict):
        if table.get("name") and isinstance(table.get("data"), dict):
            yield table
        for value in table.values():
            yield from _runs(value)
    elif isinstance(table, list):
        for value in table:
            yield from _runs(value)


def collect(summary: str) -> list[dict]:
    rows = []
    table = json.loads(dvc("exp", "show", "--json", "--all-commits"))  # experiments of older baselines too
    for run in _runs(table):
        if run["name"] not in ROWS:
            continue
        metrics = (run["data"].get("metrics") or {}).get(summary, {}).get("data", {}).get("mean")
        if metrics:
            rows.append({"name": run["name"], "overrides": ROWS[run["name"]], **{k: metrics[k] for k in KEYS}})
    return sorted(rows, key=lambda r: list(ROWS).index(r["name"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--out", type=Path, default=Path("reports/ablation.json"))
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args()
    if not args.collect_only:
        queue()
        print("running the queue (one experiment at a time)...", flush=True)
        dvc("exp", "run", "--run-all", "--jobs", "1")
    rows = collect(f"reports/{args.dataset}/metrics.json")
    if not rows:
        sys.exit("error: no ablation experiments with metrics found; run without --collect-only first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"{'row':24s}" + "".join(f"{k:>13s}" for k in KEYS))
    for row in rows:
        print(f"{row['name']:24s}" + "".join(f"{row[k]:13.3f}" for k in KEYS))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
