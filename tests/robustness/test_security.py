"""Security properties read from the source and the configuration: nothing unpickles, images have a pixel limit,
uploads are limited in size and type, servers listen on 127.0.0.1 unless told otherwise. (Archive members outside
the target are refused: test_bad_archives.py.)"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from clirun import ROOT, spawn
from http_server import free_port, stop
from diyt import inference
from diyt.data import images

SCANNED = ("src", "stages", "dashboard", "benchmarks")
ANY_ADDRESS = ".".join("0" * 4)  # every interface (spelled so that this file does not hold it)
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def sources() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(tree: ast.AST) -> list[str]:
    """Imports of an unpickling module, torch.load without weights_only=True, np.load with allow_pickle=True,
    pandas' read_pickle: each as 'line: what'."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{node.lineno}: import {m}" for m in modules if m.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            call, owner = node.func.attr, ast.unparse(node.func.value)
            if (call, owner) == ("load", "torch") and not _keyword_is(node, "weights_only", True):
                found.append(f"{node.lineno}: torch.load without weights_only=True")
            if call == "load" and owner in ("np", "numpy") and _keyword_is(node, "allow_pickle", True):
                found.append(f"{node.lineno}: np.load with allow_pickle")
            if call == "read_pickle":
                found.append(f"{node.lineno}: read_pickle")
    return found


def test_the_scan_catches_what_it_looks_for():
    bad = ("import pickle\nfrom joblib import load\nimport torch\ntorch.load('w.pt')\n"
           "torch.load('w.pt', weights_only=False)\nimport numpy as np\nnp.load('a.npy', allow_pickle=True)\n"
           "import pandas as pd\npd.read_pickle('f')\ntorch.load('w.pt', weights_only=True)\n")
    assert unsafe_loads(ast.parse(bad)) == [
        "1: import pickle", "2: import joblib", "4: torch.load without weights_only=True",
        "5: torch.load without weights_only=True", "7: np.load with allow_pickle", "9: read_pickle"]


def test_nothing_in_the_source_unpickles():
    assert len(sources()) > 50
    found = {str(p.relative_to(ROOT)): bad for p in sources() if (bad := unsafe_loads(ast.parse(p.read_text())))}
    assert found == {}


def test_the_pixel_limit_is_set_wherever_images_are_opened():
    """PIL's own limit is DiyT's (a warning at it, an error at twice it), set by diyt.data.images, which every
    module that opens an image imports."""
    assert Image.MAX_IMAGE_PIXELS == images.MAX_PIXELS == 64_000_000
    openers = [p for p in sources() if "Image.open(" in p.read_text()]
    assert openers
    for path in openers:
        text = path.read_text()
        assert path.name == "images.py" or "from diyt.data.images import" in text, path
    outcome = spawn(["-c", "import diyt.bundle, diyt.data.sources; from PIL import Image; "
                           "print(Image.MAX_IMAGE_PIXELS)"])
    assert outcome.stdout.strip() == "64000000", outcome.stderr


def streamlit_config() -> dict:
    return tomllib.loads((ROOT / "dashboard" / ".streamlit" / "config.toml").read_text())


def test_uploads_are_limited_in_size_and_type():
    assert streamlit_config()["server"]["maxUploadSize"] * 2**20 == inference.MAX_UPLOAD_BYTES
    view = ast.parse((ROOT / "dashboard" / "views" / "inference.py").read_text())
    uploaders = [n for n in ast.walk(view) if isinstance(n, ast.Call) and ast.unparse(n.func) == "st.file_uploader"]
    assert len(uploaders) == 1
    assert ast.unparse(next(k.value for k in uploaders[0].keywords if k.arg == "type")) == \
        "list(inference.UPLOAD_TYPES)"
    assert set(inference.UPLOAD_TYPES) <= {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def test_servers_listen_on_localhost_unless_told_otherwise():
    """The dashboard's config, every server socket the code or its tests open, every `streamlit run` they start."""
    assert streamlit_config()["server"]["address"] == "127.0.0.1"
    assert "streamlit run dashboard/app.py        # then open http://127.0.0.1:8501" in (ROOT / "README.md").read_text()
    for path in [*sources(), *(ROOT / "tests").rglob("*.py")]:
        text = path.read_text()
        for call in ast.walk(ast.parse(text)):
            if isinstance(call, ast.Call) and ast.unparse(call.func).endswith(("HTTPServer", ".bind", "create_server")):
                host = call.args[0] if call.args else None
                assert isinstance(host, ast.Tuple) and ast.unparse(host.elts[0]) == "'127.0.0.1'", \
                    f"{path}:{call.lineno}: {ast.unparse(call)}"
        if '"streamlit", "run"' in text and path.resolve() != Path(__file__).resolve():  # this one omits it on purpose
            assert '"--server.address", "127.0.0.1"' in text, path
        assert ANY_ADDRESS not in text, path


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from Linux's /proc")
def test_the_dashboard_listens_on_localhost_from_any_folder(tmp_path):
    """`streamlit run <project>/dashboard/app.py` started in another folder, whose own .streamlit/config.toml asks
    for every interface, with no --server.address: the config beside app.py wins, and only 127.0.0.1 listens."""
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(f'[server]\naddress = "{ANY_ADDRESS}"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}  # no inherited address
    env |= {"DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
                               "--server.port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not (addresses := listening_addresses(port)) and time.monotonic() < deadline:
            assert server.poll() is None, f"streamlit exited with {server.returncode}"
            time.sleep(0.2)
        assert addresses == {"0100007F"}, addresses  # 127.0.0.1; every interface would be 00000000
    finally:
        stop(server, seconds=30)
