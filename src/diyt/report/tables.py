"""Result tables in the seed's format (image AUROC, F1, AUPRO) plus pixel AUROC and AP, with a mean row."""

from __future__ import annotations

import pandas as pd

COLUMNS = {"image_auroc": "image AUROC", "f1": "F1", "aupro": "AUPRO", "pixel_auroc": "pixel AUROC",
           "image_ap": "image AP", "f1_max": "F1-max (test)"}


def results_frame(summary: dict) -> pd.DataFrame:
    """One row per category and a mean row, columns in the seed's order."""
    rows = {**summary["categories"], "mean": summary["mean"]}
    frame = pd.DataFrame.from_dict(rows, orient="index")[list(COLUMNS)].rename(columns=COLUMNS)
    frame.index.name = "category"
    return frame


def frame_rows(frame: pd.DataFrame, digits: int = 3) -> list[list[str]]:
    """The frame's rows as text: the index, then every value rounded to `digits`."""
    return [[str(i), *(f"{v:.{digits}f}" for v in row)] for i, row in zip(frame.index, frame.to_numpy())]


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (values rounded), without an extra dependency."""
    header = "| " + " | ".join([frame.index.name or "", *frame.columns]) + " |"
    rule = "| " + " | ".join(["---"] + ["---:"] * len(frame.columns)) + " |"
    body = ["| " + " | ".join([f"**{i}**" if i == "mean" else str(i), *(f"{v:.{digits}f}" for v in row)]) + " |"
            for i, row in zip(frame.index, frame.to_numpy())]
    return "\n".join([header, rule, *body])
