"""DVC stage: the dataset summary (metrics.json) and the report (Markdown + self-contained HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diyt.config import load_params
from diyt.errors import user_errors
from diyt.report.tables import markdown, results_frame
from diyt.report.writer import ReportPaths, make_report, write_report


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--reports", type=Path, required=True, help="reports/<dataset>/categories")
    parser.add_argument("--model-config", type=Path, required=True, help="models/pretrain/config.json")
    parser.add_argument("--timings", type=Path, default=None, help="reports/timings (optional)")
    parser.add_argument("--ablation", type=Path, required=True, help="reports/ablation.json (optional file)")
    parser.add_argument("--summary", type=Path, required=True, help="reports/<dataset>/metrics.json")
    parser.add_argument("--markdown", type=Path, required=True, help="reports/report.md")
    parser.add_argument("--html", type=Path, required=True, help="reports/report.html")
    parser.add_argument("--figures", type=Path, required=True, help="the Markdown's figures folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    paths = ReportPaths(args.reports, args.model_config, args.timings, args.ablation, args.summary,
                        args.markdown, args.html, args.figures)
    summary, doc = make_report(paths, dataset=params.data.dataset, categories=params.data.categories,
                               eval_params=params.eval, params_digest=params.digest())
    write_report(paths, summary, doc)
    print(markdown(results_frame(summary)))
    print(f"report -> {args.markdown}, {args.html}")


if __name__ == "__main__":
    main()
