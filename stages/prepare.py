"""DVC stage: fetch (or synthesise) the dataset and write it in the MVTec AD layout with manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from diyt.config import load_params
from diyt.data.prepare import prepare
from diyt.errors import user_errors
from diyt.report.timings import stage_timer


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="data/prepared")
    parser.add_argument("--cache", type=Path, required=True, help="where downloads are kept and resumed")
    parser.add_argument("--timing", type=Path, default=None, help="reports/timings/<stage>.json: wall time")
    args = parser.parse_args(argv)
    with stage_timer(args.timing, "prepare"):
        params = load_params(args.params)
        where = prepare(params.data, args.out, args.cache)
        print(f"prepared {', '.join(params.data.categories)} in {where}")


if __name__ == "__main__":
    main()
