"""Threshold explorer: move the image threshold, see precision, recall, F1 and the confusion matrix at once."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

import common
from diyt import results
from diyt.errors import DiytError


def threshold_ui(key: str, low: float, high: float, step: float, validation: float) -> float:
    """A slider over the score range, starting at the last choice (or the validation threshold), and a reset."""
    slider = f"slider/{key}"
    if slider not in st.session_state:  # a page's widget state is dropped when another page is shown
        st.session_state[slider] = min(max(st.session_state.get(key, validation), low), high)
    st.button("Reset to the validation threshold", on_click=st.session_state.update, args=({slider: validation},))
    value = st.slider("Image threshold (score ≥ threshold → anomalous)", low, high, step=step, format="%.4f",
                      key=slider)
    st.session_state[key] = value  # for the heatmap gallery's outcomes
    return value


def metrics_ui(point: results.OperatingPoint, reference: results.OperatingPoint) -> None:
    """Precision, recall and F1 at the chosen threshold, with their change from the validation threshold."""
    for column, (label, now, then) in zip(st.columns(3), [("Precision", point.precision, reference.precision),
                                                          ("Recall", point.recall, reference.recall),
                                                          ("F1", point.f1, reference.f1)]):
        change = now - then
        column.metric(label, f"{now:.3f}", f"{change:+.3f}" if abs(change) > 1e-12 else None,
                      delta_description="vs validation threshold" if abs(change) > 1e-12 else None)


def histogram(frame: pd.DataFrame, chosen: float, validation: float) -> alt.LayerChart:
    """Test scores by class, the validation threshold dashed and the chosen one solid."""
    data = frame.assign(kind=frame["label"].map({0: "normal", 1: "defective"}))
    bars = alt.Chart(data).mark_bar(opacity=0.6).encode(
        x=alt.X("score:Q", bin=alt.Bin(maxbins=40), title="image score"),
        y=alt.Y("count():Q", stack=None, title="test images"),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["normal", "defective"], range=["#4c78a8", "#e45756"]),
                        legend=alt.Legend(orient="bottom", title=None)))
    rules = pd.DataFrame({"score": [validation, chosen], "which": ["validation threshold", "chosen threshold"]})
    lines = alt.Chart(rules).mark_rule(strokeWidth=2).encode(
        x="score:Q", strokeDash=alt.StrokeDash("which:N", scale=alt.Scale(
            domain=["validation threshold", "chosen threshold"], range=[[6, 4], [1, 0]]),
            legend=alt.Legend(orient="bottom", title=None)), tooltip=["which", alt.Tooltip("score:Q", format=".4f")])
    return (bars + lines).properties(height=300)


p = common.project()
sel = common.selection()
res = common.selected_category(p, sel)
frame = results.scores_frame(res)

st.title(f"Threshold explorer · {sel.dataset} / {sel.category}")
st.caption(f"Validation-chosen threshold **{res.threshold:.4f}** (from held-out normal images, never the test set); "
           f"{res.metrics.get('num_test_normal', '?')} normal and {res.metrics.get('num_test_defective', '?')} "
           "defective test images.")
low, high, step = results.slider_range(frame["score"], res.threshold)
chosen = threshold_ui(common.threshold_key(sel), low, high, step, res.threshold)
try:
    point = results.operating_point(frame["label"], frame["score"], chosen)
    reference = results.operating_point(frame["label"], frame["score"], res.threshold)
except DiytError as err:  # a test set without defective images
    st.error(str(err))
    st.stop()
metrics_ui(point, reference)

left, right = st.columns([2, 3])
left.markdown("**Confusion matrix**")
left.dataframe(results.confusion_frame(point))
left.caption(f"At the validation threshold: F1 {reference.f1:.3f} · best F1 on the test set (an oracle): "
             f"{res.metrics.get('f1_max', float('nan')):.3f}")
right.altair_chart(histogram(frame, chosen, res.threshold), width="stretch")
