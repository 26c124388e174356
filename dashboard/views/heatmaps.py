"""Heatmaps: the evaluation's per-image figures, filtered by defect type and outcome at the current threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

import common
from diyt import results

COLUMNS = 2
SHOW = (12, 24, 48, 100, 500)


@dataclass(frozen=True)
class Filters:
    defect_types: list[str]
    outcomes: list[str]
    descending: bool
    limit: int


def filters_ui(defect_types: list[str]) -> Filters:
    """Which images to show and in what order."""
    a, b, c, d = st.columns([3, 2, 1, 1])
    kinds = a.multiselect("Defect type", defect_types, default=defect_types, key="heatmaps_types")
    outcomes = b.multiselect("Outcome", list(results.OUTCOMES), default=list(results.OUTCOMES),
                             key="heatmaps_outcomes", help="TP/FN: defective images flagged/missed; "
                                                           "FP/TN: normal images flagged/passed")
    order = c.selectbox("Score", ["highest first", "lowest first"], key="heatmaps_order")
    limit = d.selectbox("Show", SHOW, index=1, key="heatmaps_limit")
    return Filters(kinds, outcomes, order == "highest first", limit)


def gallery_ui(items: pd.DataFrame) -> None:
    """The figures two per row, each captioned with its outcome, defect type, image and score."""
    for start in range(0, len(items), COLUMNS):
        for column, item in zip(st.columns(COLUMNS), items.iloc[start:start + COLUMNS].itertuples()):
            caption = f"{item.outcome} · {item.defect_type} · {item.image} · score {item.score:.4f}"
            if Path(item.figure).is_file():
                column.image(item.figure, caption=caption, width="stretch")
            else:
                column.warning(f"{caption}: figure missing")


p = common.project()
sel = common.selection()
res = common.selected_category(p, sel)
frame = results.scores_frame(res)
threshold = st.session_state.get(common.threshold_key(sel), res.threshold)

st.title(f"Heatmaps · {sel.dataset} / {sel.category}")
source = "validation-chosen" if threshold == res.threshold else "chosen in the threshold explorer"
st.caption(f"Outcomes at the {source} threshold **{threshold:.4f}**. Each figure: input · ground-truth mask · "
           "anomaly map over the input, the ground truth outlined in red · reconstruction (feature target: the "
           "reconstructed features' three principal components as colours).")
chosen = filters_ui(sorted(frame["defect_type"].unique()))
items = results.gallery(frame, threshold, chosen.defect_types, chosen.outcomes, chosen.descending)
counts = results.gallery(frame, threshold)["outcome"].value_counts()
st.write(" · ".join(f"{k} {int(counts.get(k, 0))}" for k in results.OUTCOMES)
         + f" — showing {min(len(items), chosen.limit)} of {len(items)} matching")
if not any(Path(f).is_file() for f in frame["figure"]):
    st.warning(f"The figures are not in the working tree (DVC tracks them): `dvc pull` or "
               f"`dvc repro evaluate@{sel.category}`.")
gallery_ui(items.head(chosen.limit))
