"""DiyT results dashboard: `streamlit run dashboard/app.py` (http://127.0.0.1:8501).

It reads what the pipeline wrote (reports/, models/, bundles/) and DVC's experiments; every computation is in
`src/diyt` (`diyt.results`, `diyt.inference`). Set DIYT_ROOT to read another project's results.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `streamlit run` adds it; AppTest does not
    sys.path.insert(0, str(HERE))

import streamlit as st  # noqa: E402

import common  # noqa: E402

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/table_chart:", default=True),
    st.Page("views/curves.py", title="Curves", icon=":material/show_chart:", url_path="curves"),
    st.Page("views/heatmaps.py", title="Heatmaps", icon=":material/grid_view:", url_path="heatmaps"),
    st.Page("views/threshold.py", title="Threshold explorer", icon=":material/tune:", url_path="threshold"),
    st.Page("views/inference.py", title="Live inference", icon=":material/upload:", url_path="inference"),
    st.Page("views/experiments.py", title="Experiments", icon=":material/science:", url_path="experiments"),
]

st.set_page_config(page_title="DiyT results", page_icon=":material/search:", layout="wide")
page = st.navigation(PAGES)
st.session_state[common.SELECTION] = common.selection_ui(common.project())
page.run()
