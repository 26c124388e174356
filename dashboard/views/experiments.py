"""Experiments: choose two of the workspace, commits and DVC experiments; see how their params and metrics differ."""

from __future__ import annotations

import streamlit as st

import common
from diyt import results


def pair_ui(labels: list[str], default_b: int) -> tuple[str, str, bool]:
    """Experiments A and B, and whether to list only what differs."""
    left, right = st.columns(2)
    a = left.selectbox("A", labels, index=min(1, len(labels) - 1), key="experiments_a")
    b = right.selectbox("B", labels, index=default_b, key="experiments_b")
    only = st.toggle("Only differences", value=True, key="experiments_only")
    return a, b, only


p = common.project()
st.title("Experiments")
runs = common.experiments(p.root, common.stamp(p))
if not runs:
    st.info("No DVC experiment data here (not a git + DVC repository, or `dvc exp show` failed). Run the pipeline "
            "and an experiment from the project root:")
    st.code("dvc repro\ndvc exp run -S model.norm=layernorm", language="bash")
    st.stop()

by_label = {e.label: e for e in runs}
labels = list(by_label)
if not any(e.kind == "experiment" for e in runs):
    st.caption("No experiments yet, only the workspace and commits. Try `dvc exp run -S model.norm=layernorm`.")
first_experiment = next((i for i, e in enumerate(runs) if e.kind == "experiment"), 0)
a, b, only = pair_ui(labels, first_experiment)
params, metrics = results.diff_frames(by_label[a], by_label[b], only_changed=only)
st.caption(f"A = `{a}` ({by_label[a].rev[:12]}), B = `{b}` ({by_label[b].rev[:12]})")

st.subheader(f"Params ({len(params)} {'differing' if only else 'in all'})")
if params.empty:
    st.write("Same params.")
else:
    st.dataframe(params, hide_index=True)
st.subheader(f"Metrics ({len(metrics)} {'differing' if only else 'in all'})")
if metrics.empty:
    st.write("Same metrics.")
else:
    st.dataframe(metrics, hide_index=True, column_config={"B - A": st.column_config.NumberColumn(format="%+.4f")})
