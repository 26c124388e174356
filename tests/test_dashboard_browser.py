"""The dashboard in a real browser: `streamlit run` on 127.0.0.1, Debian's Chromium driven by Playwright through
every page, rendered content checked and a screenshot saved per page.

Runs on the project's own results when the working tree has them complete (metrics, figures and trained models,
after `dvc repro`), and then also checks that live inference flags a defective synthetic image and passes a normal
one; otherwise (a fresh clone, or DIYT_BROWSER_FIXTURE=1) on the fixture project of test_dashboard.py.
Screenshots go to $DIYT_SCREENSHOTS or to pytest's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from diyt.data import synthetic
from http_server import free_port, stop
from test_dashboard import make_project

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")

ROOT = Path(__file__).resolve().parents[1]
DATASET, CATEGORY = "synthetic", "weave"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000


def complete_results(root: Path) -> bool:
    """The project's default results are all there: metrics, evaluate figures and the trained model."""
    category = root / "reports" / DATASET / "categories" / CATEGORY
    return ((root / "reports" / DATASET / "metrics.json").is_file() and any((category / "figures").glob("*.png"))
            and (root / "models" / DATASET / CATEGORY / "model.safetensors").is_file())


def wait_healthy(url: str, server: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer at {url} within {seconds} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, results root, whether they are the real default results) of a running `streamlit run`."""
    real = complete_results(ROOT) and not os.environ.get("DIYT_BROWSER_FIXTURE")
    root = ROOT if real else make_project(tmp_path_factory.mktemp("browser_project"))
    port = free_port()
    env = {**os.environ, "DIYT_ROOT": str(root), "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, log)
        yield url, root, real
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        stop(server)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DIYT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def open_page(page, url: str, title: str) -> None:
    """Load a dashboard page and wait until its title is rendered and the script has finished running."""
    page.goto(url)
    page.get_by_role("heading", name=title).first.wait_for()
    settle(page)


def settle(page) -> None:
    """Wait for the app to stop running (Streamlit shows a status widget while the script runs)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")


def images_loaded(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stImage] img')]"
                           ".every(img => img.complete && img.naturalWidth > 0)")


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True))
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def test_every_page_renders_real_content(served, page, shots, tmp_path):
    url, root, real = served

    open_page(page, url, f"Overview · {DATASET}")
    for text in ("mean image AUROC", "mean F1", "mean AUPRO", "mean pixel AUROC", "Per category"):
        assert page.get_by_text(text).first.is_visible(), text
    table = page.locator('[data-testid="stDataFrame"]').first
    table.wait_for()
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip().startswith("0.")
    page.screenshot(path=shots / "1_overview.png", full_page=True)

    open_page(page, f"{url}/curves", f"Curves · {DATASET} / {CATEGORY}")
    page.locator('[data-testid="stVegaLiteChart"]').nth(2).wait_for()
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 3
    page.screenshot(path=shots / "2_curves.png", full_page=True)

    open_page(page, f"{url}/heatmaps", f"Heatmaps · {DATASET} / {CATEGORY}")
    first = page.locator('[data-testid="stImage"] img').first
    first.wait_for()
    images_loaded(page)
    assert page.locator('[data-testid="stImage"] img').count() >= 8
    page.screenshot(path=shots / "3_heatmaps.png", full_page=True)

    open_page(page, f"{url}/threshold", f"Threshold explorer · {DATASET} / {CATEGORY}")
    before = metric_value(page, "F1")
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("Home")  # the lowest score: every image flagged, recall 1
    page.wait_for_function(
        "before => [...document.querySelectorAll('[data-testid=stMetric]')].some("
        "m => m.innerText.startsWith('F1') && !m.innerText.includes(before))", arg=before)
    settle(page)
    assert metric_value(page, "Recall") == "1.000" and metric_value(page, "F1") != before
    assert page.get_by_text("Confusion matrix").is_visible()
    page.screenshot(path=shots / "4_threshold.png", full_page=True)

    size = 256 if real else 64
    samples = synthetic.generate(CATEGORY, 1, 1, 1, size, seed=2024)  # train, test good, test defective (hole)
    for sample, expected in ((samples[2], "anomalous"), (samples[1], "normal")):
        image = tmp_path / f"{sample.defect_type}_{sample.name}.png"
        sample.load_image().save(image)
        open_page(page, f"{url}/inference", f"Live inference · {DATASET}")
        page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(image)
        verdict = page.get_by_text("Verdict:").first
        verdict.wait_for()
        settle(page)
        text = verdict.inner_text()
        if real:  # the default models must get these right; the fixture's micro models are random
            assert f"Verdict: {expected}" in text, (sample.defect_type, text, metric_value(page, "Score"))
        page.locator('[data-testid="stImage"] img').nth(1).wait_for()  # the two figures may follow the verdict
        assert page.locator('[data-testid="stImage"] img').count() == 2
        images_loaded(page)
        page.screenshot(path=shots / f"5_inference_{sample.defect_type}.png", full_page=True)

    open_page(page, f"{url}/experiments", "Experiments")
    page.get_by_text("Only differences").wait_for()
    assert page.get_by_role("heading", name="Params").count() + page.get_by_text("Params (").count() >= 1
    page.screenshot(path=shots / "6_experiments.png", full_page=True)
    print(f"screenshots in {shots}")
