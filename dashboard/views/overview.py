"""Overview: every category's headline metrics and their mean, against the committed baseline and experiments."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import common
from diyt import results

FORMAT = "%.3f"


def headline_ui(table: pd.DataFrame) -> None:
    """The mean of each headline metric, with its change from the baseline when the table has one."""
    for column, key in zip(st.columns(len(results.HEADLINE)), results.HEADLINE):
        label, change = results.LABELS[key], f"Δ {results.LABELS[key]}"
        value, delta = table.loc["mean", label], table.loc["mean"].get(change)
        if delta is None or pd.isna(delta):
            column.metric(f"mean {label}", f"{value:.3f}")
        elif round(delta, 3) == 0:
            column.metric(f"mean {label}", f"{value:.3f}", "±0.000", delta_color="off", delta_arrow="off",
                          delta_description="same as baseline")
        else:
            column.metric(f"mean {label}", f"{value:.3f}", f"{delta:+.3f}", delta_description="vs baseline")


def experiments_ui(options: list[str]) -> list[str]:
    """The experiments and commits to compare with."""
    return st.multiselect("Compare with", options, default=options[:6], key="overview_compare")


p = common.project()
sel = common.selection()
version = common.stamp(p)
current = common.summary(p.root, sel.dataset, results.WORKSPACE, version)
if current is None:
    common.repro_hint(f"No summary for `{sel.dataset}` yet.")

baseline = common.summary(p.root, sel.dataset, "HEAD", version)
table = results.metrics_table(current, baseline)
st.title(f"Overview · {sel.dataset}")
headline_ui(table)

st.subheader("Per category")
if baseline is None:
    st.caption("No committed baseline (reports are not in git at HEAD); showing the working tree only.")
else:
    st.caption("Working tree results; Δ is the change from the committed baseline (`git show HEAD:…`).")
st.dataframe(table, column_config={c: st.column_config.NumberColumn(format=FORMAT) for c in table.columns})

st.subheader("Compared with experiments")
path = results.summary_path(common.REPORTS, sel.dataset)
runs = common.experiments(p.root, version)
recorded = {e.label: s for e in runs if e.kind != "workspace" and (s := results.summary_of(e, path)) is not None}
if not any(e.kind == "experiment" for e in runs):
    st.caption("No DVC experiments yet. Try one with, e.g., `dvc exp run -S model.norm=layernorm`.")
if recorded:
    chosen = experiments_ui(list(recorded))
    rows = {"workspace": current, **{name: recorded[name] for name in chosen}}
    which = st.radio("Row", ["mean", *current["categories"]], horizontal=True, key="overview_row")
    st.dataframe(results.comparison_table(rows, which),
                 column_config={results.LABELS[k]: st.column_config.NumberColumn(format=FORMAT)
                                for k in results.HEADLINE})

others = [d for d in common.datasets(p.root, version) if d != sel.dataset]
if others:
    st.subheader("Other datasets")
    means = {d: s for d in others if (s := common.summary(p.root, d, results.WORKSPACE, version))}
    st.dataframe(results.comparison_table(means))
