"""Fault injection: SIGKILL the pipeline at seeded random moments of every stage (mid-download, mid-extraction,
while writing the prepared data, mid-training, while writing figures, metrics and the bundle, while writing the
report), then `dvc repro` again: it completes, training resumes from its checkpoint, and every output is
byte-identical to an uninterrupted run's.

Slow (minutes): `pytest -m slow tests/robustness`. The dataset archive is served by a local mirror
(mirror_prepare.py) slowly enough that a download and an extraction can be interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dvc_repo import DvcRepo, make_repo
from http_server import ArchiveServer, tar_bytes

import badfiles as bf
from clirun import ROOT
from conftest import MICRO

pytestmark = pytest.mark.slow

KILLS = 10
SEED = 11
MISSES = 3  # tries with a shorter delay when a kill lands after its stage's command has ended
DATASET, CATEGORY = "mvtec_ad", "bottle"
MIRROR = Path(__file__).with_name("mirror_prepare.py")
CACHE = Path(".cache/downloads") / DATASET
ARCHIVE = "mvtec.tar"
PARAMS = {
    "data": {**MICRO["data"], "source": DATASET, "categories": [CATEGORY]},
    "model": MICRO["model"],
    # long enough (seconds) to be killed in the middle, checkpointed often enough to resume from
    "train": {"device": "cpu", "checkpoint_every": 20,
              "pretrain": {"steps": 400, "batch_size": 4, "warmup_steps": 2},
              "finetune": {"steps": 200, "batch_size": 4, "warmup_steps": 2}},
    "eval": MICRO["eval"],
}
# what the pipeline writes that must not depend on being interrupted (timings and logs of wall time excepted)
OUTPUTS = ("data/prepared", "models", "bundles", f"reports/{DATASET}", "reports/report_figures")


def archive() -> bytes:
    """A tiny MVTec AD bottle category, plus 600 documents: 2.6 MB, longer than one read of the downloader's
    (1 MB), in many members, so that downloading and extracting take a moment."""
    files = {f"{CATEGORY}/train/good/{i:03d}.png": bf.png(i) for i in range(10)}
    files |= {f"{CATEGORY}/test/good/{i:03d}.png": bf.png(100 + i) for i in range(3)}
    for i in range(3):
        files[f"{CATEGORY}/test/broken/{i:03d}.png"] = bf.png(200 + i)
        files[f"{CATEGORY}/ground_truth/broken/{i:03d}_mask.png"] = bf.encode(bf.mask())
    files |= {f"docs/{i:04d}.txt": random.Random(i).randbytes(4000) for i in range(600)}
    return tar_bytes(files, "w")


# ----------------------------------------------------------------------------------------------- moments
@dataclass(frozen=True)
class Launch:
    """What the repository looked like when the run started (to tell this run's files from the last one's)."""

    root: Path
    mtimes: dict[str, int]

    @classmethod
    def take(cls, root: Path) -> Launch:
        watched = ["checkpoints/pretrain/checkpoint.safetensors",
                   f"checkpoints/finetune/{CATEGORY}/checkpoint.safetensors", f"{category_reports()}/figures"]
        return cls(root, {w: (root / w).stat().st_mtime_ns if (root / w).exists() else 0 for w in watched})

    def fresh(self, rel: str) -> bool:
        path = self.root / rel
        return path.exists() and path.stat().st_mtime_ns != self.mtimes[rel]

    def any(self, pattern: str) -> bool:
        return any(self.root.glob(pattern))


def category_reports() -> str:
    return f"reports/{DATASET}/categories/{CATEGORY}"


@dataclass(frozen=True)
class Moment:
    """A moment to kill at: the stage forced to run, when it is reached, and the range of the random delay."""

    name: str
    stage: str
    reached: Callable[[Launch, str], bool]  # (launch, dvc's output so far)
    delay: tuple[float, float]
    fresh_download: bool = False
    resumes: bool = False  # whether the run after the kill must resume training from a checkpoint


MOMENTS = [
    Moment("mid-download", "prepare", lambda l, out: any(p.stat().st_size for p in l.root.glob(f"{CACHE}/*.part")),
           (0.0, 1.0), fresh_download=True),
    Moment("mid-extraction", "prepare", lambda l, out: l.any(f"{CACHE}/.extracted.*.tmp"), (0.0, 0.3),
           fresh_download=True),
    Moment("writing the prepared data", "prepare", lambda l, out: l.any("data/.prepared.*.tmp"), (0.0, 0.3)),
    Moment("mid-pretraining", "pretrain", lambda l, out: l.fresh("checkpoints/pretrain/checkpoint.safetensors"),
           (0.0, 1.5), resumes=True),
    Moment("mid-finetuning", f"finetune@{CATEGORY}",
           lambda l, out: l.fresh(f"checkpoints/finetune/{CATEGORY}/checkpoint.safetensors"), (0.0, 0.8),
           resumes=True),
    Moment("writing figures", f"evaluate@{CATEGORY}", lambda l, out: l.any(f"{category_reports()}/.figures.*.tmp"),
           (0.0, 0.1)),
    Moment("writing metrics, plots and the bundle", f"evaluate@{CATEGORY}",
           lambda l, out: l.fresh(f"{category_reports()}/figures"), (0.0, 0.2)),
    Moment("the report stage", "report", lambda l, out: "Running stage 'report'" in out, (0.5, 3.0)),
]


# -------------------------------------------------------------------------------------------------- runs
def digests(root: Path) -> dict[str, str]:
    """sha256 of every output file, by path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for out in OUTPUTS for p in sorted((root / out).rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporary files and folders of an interrupted write (outside .git and .dvc)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith((".tmp", ".old", ".part")) and not {".git", ".dvc"} & set(p.parts))


@dataclass(frozen=True)
class Kill:
    moment: Moment
    delay: float
    running: str  # the stage dvc had started and not finished when killed ("" if none)


def kill_during(repo: DvcRepo, moment: Moment, delay: float, timeout: float = 300) -> Kill:
    """Force `moment.stage` to run under `dvc repro`, SIGKILL its whole process group `delay` s after the moment."""
    if moment.fresh_download:
        for path in (repo.path / CACHE).glob("*"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    launch = Launch.take(repo.path)
    log = repo.path.parent / f"{repo.path.name}-killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro", "-f", "-s", moment.stage], cwd=repo.path, env=repo.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not moment.reached(launch, log.read_text()):
            assert proc.poll() is None, f"{moment.name}: the run ended before the moment:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{moment.name}: never reached"
            time.sleep(0.005)
        time.sleep(delay)
        alive = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    _, *stages = log.read_text().split("Running stage '")
    last = stages[-1] if stages else "'lock file"
    finished = "lock file" in last  # dvc records a stage in dvc.lock once its command has succeeded
    return Kill(moment, delay, last.split("'")[0] if alive and not finished else "")


def repro_after_kill(repo: DvcRepo) -> subprocess.CompletedProcess:
    """`dvc repro` after a kill. A kill that lands while DVC itself rewrites its table of running stages
    (`.dvc/tmp/rwlock`, written in place, not renamed: treeverse/dvc#7615) leaves it empty, and DVC then refuses
    to run until it is removed, which is DVC's own remedy and what a user does; only an empty table is removed."""
    rwlock = repo.path / ".dvc" / "tmp" / "rwlock"
    if rwlock.is_file() and not rwlock.read_text().strip():
        rwlock.unlink()
    return repo.dvc("repro")


@pytest.fixture(scope="module")
def server():
    with ArchiveServer(rate=1_500_000) as srv:
        yield srv


@pytest.fixture(scope="module")
def repo(tmp_path_factory, server):
    repo = make_repo(tmp_path_factory.mktemp("kill"))
    data = archive()
    url = server.add(f"/{ARCHIVE}", data)
    repo.env |= {"MIRROR_URL": url, "MIRROR_SHA256": hashlib.sha256(data).hexdigest(), "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    stages = yaml.safe_load((repo.path / "dvc.yaml").read_text())
    prepare = stages["stages"]["prepare"]
    prepare["cmd"] = prepare["cmd"].replace("python stages/prepare.py", f"python {MIRROR} stages/prepare.py")
    (repo.path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    params = repo.params()  # every key dvc.yaml names, with the micro values over them
    for section, values in PARAMS.items():
        params[section].update({k: {**params[section][k], **v} if isinstance(v, dict) else v
                                for k, v in values.items()})
    (repo.path / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    repo.commit("micro pipeline from a mirror")
    return repo


def test_sigkill_at_random_moments_then_repro_ends_identical(repo, server):
    first = repo.dvc("repro")
    assert "Running stage 'report'" in first.stdout
    reference = digests(repo.path)
    assert len(reference) > 30 and leftovers(repo.path) == []

    rng = random.Random(SEED)
    plan = MOMENTS + rng.sample(MOMENTS, KILLS - len(MOMENTS))
    rng.shuffle(plan)
    report = []
    for moment in plan:
        delay = rng.uniform(*moment.delay)
        kill = kill_during(repo, moment, delay)
        for _ in range(MISSES):  # the stage's command ended before the delay did (a loaded machine): sooner
            if kill.running == moment.stage:
                break
            repro_after_kill(repo)
            delay /= 4
            kill = kill_during(repo, moment, delay)
        after = repro_after_kill(repo)
        report.append(f"{moment.name:40s} +{kill.delay:.2f}s  in {kill.running:16s} -> "
                      f"{'identical' if digests(repo.path) == reference else 'DIFFERENT'}")
        assert kill.running == moment.stage, (moment.name, kill)  # killed inside the stage's command
        assert f"Running stage '{moment.stage}'" in after.stdout, after.stdout
        if moment.resumes:
            assert "resuming" in after.stdout, after.stdout
        if moment.name == "mid-download":
            assert server.requests[-1].range and server.requests[-1].status == 206  # the download resumed
        assert digests(repo.path) == reference, "\n".join(report)
        assert leftovers(repo.path) == [], "\n".join(report)
        assert "Data and pipelines are up to date" in repo.dvc("status").stdout
    print("\n".join(report))
