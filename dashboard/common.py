"""What every page shares: where the results are, cached loaders over `diyt.results`, the sidebar's selection.

The loaders only read; each takes a `version` (the newest results file's mtime, part of the cache key) so a rerun
of the pipeline shows up without restarting the app.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from diyt import inference, results
from diyt.bundle import Bundle
from diyt.errors import DiytError
from diyt.predict import TorchScorer
from diyt.report.results import CategoryResults, load_category

ROOT_ENV = "DIYT_ROOT"  # another project root, e.g. fixture results in tests
# the pipeline's output folders and params file, as dvc.yaml names them
REPORTS, MODELS, BUNDLES, PARAMS = "reports", "models", "bundles", "params.yaml"
CATEGORIES = "categories"
REPRO = "dvc repro"
SELECTION = "selection"  # session-state key of the sidebar's Selection, set by app.py for the pages


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def reports(self) -> Path:
        return self.root / REPORTS

    @property
    def models(self) -> Path:
        return self.root / MODELS

    def category_dir(self, dataset: str, category: str) -> Path:
        return self.reports / dataset / CATEGORIES / category


@dataclass(frozen=True)
class Selection:
    dataset: str
    category: str | None


def project() -> Project:
    """The project root: $DIYT_ROOT, else the folder above dashboard/."""
    root = os.environ.get(ROOT_ENV) or Path(__file__).resolve().parents[1]
    return Project(Path(root).resolve())


def stamp(p: Project) -> int:
    return results.stamp(p.reports, p.models, p.root / BUNDLES)


# --------------------------------------------------------------------------------------------- loaders
@st.cache_data(show_spinner=False)
def datasets(root: Path, version: int) -> list[str]:
    return results.datasets(Project(root).reports)


@st.cache_data(show_spinner=False)
def categories(root: Path, dataset: str, version: int) -> list[str]:
    return results.categories(Project(root).reports, dataset)


@st.cache_data(show_spinner=False)
def summary(root: Path, dataset: str, rev: str, version: int) -> dict | None:
    return results.summary(root, Project(root).reports, dataset, rev)


@st.cache_data(show_spinner=False)
def category(root: Path, dataset: str, name: str, version: int) -> CategoryResults:
    return load_category(Project(root).reports / dataset / CATEGORIES, name)


def selected_category(p, sel) -> CategoryResults:
    """The selected category's results; without them the page says how to produce them and stops."""
    try:
        return category(p.root, sel.dataset, sel.category, stamp(p))
    except DiytError as err:
        repro_hint(str(err))


@st.cache_data(show_spinner=False)
def curves(root: Path, dataset: str, name: str, kind: str, revs: tuple[tuple[str, str], ...],
           version: int) -> pd.DataFrame:
    return results.curves(root, Project(root).reports, dataset, name, kind, dict(revs))


@st.cache_data(show_spinner="Reading DVC experiments…", ttl=120)
def experiments(root: Path, version: int) -> list[results.Experiment]:
    return results.experiments(root)


@st.cache_data(show_spinner=False)
def trained(root: Path, dataset: str, version: int) -> list[str]:
    return results.trained_categories(Project(root).models, dataset)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def live_model(root: Path, dataset: str, name: str, version: int) -> tuple[Bundle, TorchScorer]:
    p = Project(root)
    bundle = inference.load_model(root / BUNDLES / dataset / name, p.models / dataset / name,
                                  p.category_dir(dataset, name) / "metrics.json", root / PARAMS)
    return bundle, inference.scorer(bundle)


# ------------------------------------------------------------------------------------------------- UI
def repro_hint(what: str = "No results yet.") -> None:
    """Say how to produce the results, and stop the page."""
    st.info(f"{what} Produce them with the pipeline, from the project root:")
    st.code(REPRO, language="bash")
    st.caption(f"Results are read from `{project().root}`.")
    st.stop()


def selection_ui(p: Project) -> Selection | None:
    """The sidebar's dataset and category; None when there are no results."""
    key = stamp(p)
    names = datasets(p.root, key)
    if not names:
        return None
    dataset = st.sidebar.selectbox("Dataset", names, key="dataset")
    cats = categories(p.root, dataset, key)
    cat = st.sidebar.selectbox("Category", cats, key="category") if cats else None
    if st.sidebar.button("Reload results", help="Read the results again (after `dvc repro` or `dvc exp run`)"):
        st.cache_data.clear()
        st.cache_resource.clear()
    return Selection(dataset, cat)


def selection() -> Selection:
    """The sidebar's choice, or the `dvc repro` hint when there are no results yet."""
    sel = st.session_state.get(SELECTION)
    if sel is None or sel.category is None:
        repro_hint()
    return sel


def threshold_key(sel: Selection) -> str:
    """Where the threshold explorer keeps its choice, for the heatmap gallery's outcomes."""
    return f"threshold/{sel.dataset}/{sel.category}"
