"""DVC stage: the dataset summary (metrics.json) and the report (Markdown) from every category's evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from diyt.config import load_params
from diyt.errors import user_errors
from diyt.io import write_json, write_text
from diyt.report.summary import read_metrics, summarize
from diyt.report.tables import markdown, results_frame


@user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--reports", type=Path, required=True, help="reports/<dataset>/categories")
    parser.add_argument("--summary", type=Path, required=True, help="reports/<dataset>/metrics.json")
    parser.add_argument("--markdown", type=Path, required=True, help="reports/report.md")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = summarize({c: read_metrics(args.reports / c / "metrics.json") for c in params.data.categories})
    write_json(args.summary, summary)
    table = markdown(results_frame(summary))
    write_text(args.markdown, f"# DiyT results: {params.data.dataset}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
