"""Curves: a category's ROC, PR and PRO curves, overlaid across the working tree, commits and experiments."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

import common
from diyt import results
from diyt.eval.metrics import METRIC_KEYS

TITLES = {"roc": "ROC (image level)", "pr": "Precision-recall (image level)", "pro": "PRO (pixel level)"}
AUPRO_LIMIT = 0.3


def sources_ui(options: dict[str, str]) -> dict[str, str]:
    """The sources to overlay, {label: git revision}; the working tree, the baseline commit and the first
    experiments by default."""
    labels = list(options)
    default = labels[:4]  # the working tree, HEAD, then the latest experiments
    chosen = st.multiselect("Overlay", labels, default=default, key="curves_sources",
                            help="The working tree, commits (baselines) and DVC experiments")
    return {label: options[label] for label in chosen}


def chart(frame: pd.DataFrame, kind: str) -> alt.LayerChart:
    """Lines of y against x, one colour per source, the working tree dashed on top, on the unit square."""
    x, y = results.CURVES[kind]
    scale = alt.Scale(domain=[0, 1])
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:Q", scale=scale), y=alt.Y(f"{y}:Q", scale=scale),
        color=alt.Color("source:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["source", alt.Tooltip(f"{x}:Q", format=".3f"), alt.Tooltip(f"{y}:Q", format=".3f")])
    workspace = alt.datum.source == results.WORKSPACE
    layers = [base.transform_filter(~workspace).mark_line(strokeWidth=2),
              base.transform_filter(workspace).mark_line(strokeWidth=2.5, strokeDash=[6, 3])]
    if kind == "pro":
        limit = pd.DataFrame({x: [AUPRO_LIMIT]})
        layers.append(alt.Chart(limit).mark_rule(strokeDash=[4, 4], color="gray").encode(x=f"{x}:Q"))
    return alt.layer(*layers).properties(title=TITLES[kind], height=320)


p = common.project()
sel = common.selection()
version = common.stamp(p)
st.title(f"Curves · {sel.dataset} / {sel.category}")

options = {results.WORKSPACE: results.WORKSPACE}
options.update({e.label: e.rev for e in common.experiments(p.root, version) if e.kind != "workspace"})
if len(options) == 1:  # no DVC experiment data: the committed results, if git has them
    options["HEAD"] = "HEAD"
revs = sources_ui(options)
if not revs:
    st.info("Choose at least one source to draw.")
    st.stop()

frames = {kind: common.curves(p.root, sel.dataset, sel.category, kind, tuple(revs.items()), version)
          for kind in results.CURVES}
if frames["roc"].empty:
    common.repro_hint(f"No curves for `{sel.category}` in the chosen sources.")
missing = sorted(set(revs) - set(frames["roc"]["source"]))
if missing:
    st.caption(f"No curves recorded for: {', '.join(missing)}.")
for column, (kind, frame) in zip(st.columns(3), frames.items()):
    column.altair_chart(chart(frame, kind), width="stretch")
st.caption(f"AUPRO integrates the PRO curve up to FPR {AUPRO_LIMIT} (dashed), divided by {AUPRO_LIMIT}.")

path = results.summary_path(common.REPORTS, sel.dataset)
recorded = {e.label: s for e in common.experiments(p.root, version)
            if e.label in revs and (s := results.summary_of(e, path)) is not None}
recorded.setdefault(results.WORKSPACE, common.summary(p.root, sel.dataset, results.WORKSPACE, version))
rows = {label: recorded[label] for label in revs if recorded.get(label)}
if rows:
    st.dataframe(results.comparison_table(rows, sel.category, METRIC_KEYS),
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in results.LABELS.values()})
