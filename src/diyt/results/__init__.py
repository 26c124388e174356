"""Read-only views of the pipeline's results for the dashboard: summaries, curves, scores, experiments.

Pure functions over what the stages wrote (`reports/`, `models/`), over git revisions of those files and over
`dvc exp show --json`; nothing here writes a file or trains anything. The dashboard caches and draws them.
"""

from diyt.results.experiments import (
    Experiment, diff_frames, experiments, parse_exp_show, summary_of, summary_path,
)
from diyt.results.operating import (
    OUTCOMES, OperatingPoint, confusion_frame, gallery, operating_point, outcomes, slider_range,
)
from diyt.results.reports import (
    CURVES, HEADLINE, LABELS, WORKSPACE, categories, comparison_table, curves, datasets, metrics_table, read_json_at,
    scores_frame, stamp, summary, trained_categories,
)

__all__ = [
    "CURVES", "HEADLINE", "LABELS", "OUTCOMES", "WORKSPACE", "Experiment", "OperatingPoint", "categories",
    "comparison_table", "confusion_frame", "curves", "datasets", "diff_frames", "experiments", "gallery",
    "metrics_table", "operating_point", "outcomes", "parse_exp_show", "read_json_at", "scores_frame",
    "slider_range", "stamp", "summary", "summary_of", "summary_path", "trained_categories",
]
