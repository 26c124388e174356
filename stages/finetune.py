"""DVC stage: fine-tune the pre-trained model on one category's train images."""

from __future__ import annotations

import argparse
from pathlib import Path

from diyt.config import load_params
from diyt.errors import ConfigError, user_errors
from diyt.report.timings import stage_timer
from diyt.train import relaunch_under_torchrun, run_phase, under_torchrun


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--category", required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/prepared/<dataset>")
    parser.add_argument("--init", type=Path, required=True, help="models/pretrain")
    parser.add_argument("--out", type=Path, required=True, help="models/<dataset>/<category>")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a persisted folder for the checkpoint")
    parser.add_argument("--log", type=Path, default=None, help="dvclive folder: loss and lr per step")
    parser.add_argument("--feature-cache", type=Path, default=None,
                        help="a folder for the frozen backbone's train maps, shared by the stages (.cache/features)")
    parser.add_argument("--timing", type=Path, default=None, help="reports/timings/<stage>.json: wall time")
    args = parser.parse_args(argv)
    with stage_timer(args.timing, f"finetune@{args.category}"):
        params = load_params(args.params)
        if args.category not in params.data.categories:
            raise ConfigError(f"--category {args.category}: not in data.categories "
                              f"({', '.join(params.data.categories)})")
        if params.train.nproc > 1 and not under_torchrun():
            relaunch_under_torchrun(params.train.nproc, params.train.device)
        result = run_phase("finetune", model_params=params.model, data=params.data, train_params=params.train,
                           params_digest=params.digest(), dataset_dir=args.data, categories=[args.category],
                           out_dir=args.out, checkpoint_dir=args.checkpoint, log_dir=args.log, init_dir=args.init,
                           feature_cache=args.feature_cache)
        if result is not None:
            print(f"fine-tuned {args.category} {result.total_steps} steps (last loss {result.last_loss:.4f}, "
                  f"{result.images_per_s:.1f} img/s) -> {args.out}")


if __name__ == "__main__":
    main()
