"""Live inference: upload an image, get its score, verdict and heat map from a chosen trained model."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

import common
from diyt import inference
from diyt.errors import DiytError


def model_ui(names: list[str], preferred: str | None) -> str:
    """The category model to score with (the sidebar's category by default)."""
    index = names.index(preferred) if preferred in names else 0
    return st.selectbox("Model", names, index=index, key="inference_model",
                        help="A category's trained model and the thresholds chosen on its validation normals")


def upload_ui() -> UploadedFile | None:
    """One image file of an image type; its content is checked when it is scored."""
    kinds = ", ".join(s.removeprefix(".").upper() for s in inference.UPLOAD_TYPES)
    return st.file_uploader(f"Image ({kinds}; at most {inference.MAX_UPLOAD_BYTES // 2**20} MB)",
                            type=list(inference.UPLOAD_TYPES), key="inference_upload")


def result_ui(result: inference.LiveResult) -> None:
    """Score, verdict and the heat map next to the image."""
    a, b = st.columns(2)
    a.metric("Score", f"{result.score:.4f}")
    b.metric("Threshold", f"{result.threshold:.4f}")
    if result.verdict == inference.ANOMALOUS:
        st.error(f"Verdict: **{result.verdict}** (score ≥ threshold)", icon=":material/warning:")
    else:
        st.success(f"Verdict: **{result.verdict}** (score < threshold)", icon=":material/check_circle:")
    left, right, _ = st.columns(3)
    left.image(result.image, caption="input, at the evaluation's resolution", width="stretch")
    right.image(result.heatmap, caption="anomaly map; pixels over the pixel threshold outlined in red",
                width="stretch")


p = common.project()
sel = st.session_state.get(common.SELECTION)
version = common.stamp(p)
names = common.trained(p.root, sel.dataset, version) if sel else []
if not names:
    common.repro_hint("No trained models yet.")

st.title(f"Live inference · {sel.dataset}")
name = model_ui(names, sel.category)
try:
    bundle, scorer = common.live_model(p.root, sel.dataset, name, version)
except DiytError as err:
    common.repro_hint(f"The `{name}` model cannot be loaded: {err}")
if not inference.has_bundle(p.root / common.BUNDLES / sel.dataset / name):
    st.caption("No model bundle for this category yet: the thresholds come from its metrics.json and the scoring "
               "settings from params.yaml. `dvc repro` writes the bundle.")

upload = upload_ui()
if upload is not None:
    try:
        inference.check_size(upload.name, upload.size)
        with st.spinner("Scoring…"):
            result = inference.score_upload(bundle, scorer, upload.getvalue(), upload.name)
    except DiytError as err:
        st.error(f"Cannot score this upload: {err}")
    else:
        result_ui(result)
