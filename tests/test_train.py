"""Training: the lr recipe, data order across ranks, torchrun equivalence, kill -9 resume, determinism,
refusal of foreign checkpoints, safetensors-only files and the non-finite loss stop. A micro model throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import diyt.train.loop as loop
from diyt.config import ConfigError, Params, parse_params
from diyt.data.layout import write_category
from diyt.data.sample import Sample
from diyt.errors import DiytError
from diyt.model import build_model
from diyt.train import (Batches, Checkpointing, lr_at, peak_lr, relaunch_under_torchrun, run_phase, train,
                        train_images)
from diyt.model.blocks import attention
from diyt.train.checkpoint import TRAINING_CODE, RunState, code_digest, read_run, resume, save_checkpoint
from diyt.train.distributed import Runtime, cpu_has_bf16_matmul, start

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["weave", "nut"]  # weave rotates (data.augment.rot90_categories), nut only flips
STEPS = 30
RAW = {
    "data": {"categories": CATEGORIES, "image_size": 32},
    "model": {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2, "aggregate_layers": [1, 2]},
    "train": {"checkpoint_every": 2, "seed": 3, "amp": False,  # float32: the equivalences below are exact there
              "pretrain": {"steps": STEPS, "batch_size": 4, "warmup_steps": 3, "base_lr": 0.05},
              "finetune": {"steps": 4, "batch_size": 4, "warmup_steps": 1}},
}


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, 32)[None, :, None] * rng.uniform(0.5, 1.0, 3)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    """Two categories of 10 train images (8 train + 2 val) and a test image, in the prepared layout."""
    root = tmp_path_factory.mktemp("prepared") / "synthetic"
    for c, category in enumerate(CATEGORIES):
        samples = [Sample(f"{i:03d}", "train", "good", lambda s=100 * c + i: _image(s), None, f"train {i}")
                   for i in range(10)]
        samples.append(Sample("000", "test", "good", lambda: _image(999), None, "test"))
        write_category(samples, root / category, 32, 0.2, 0)
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Subprocesses run with OMP_NUM_THREADS=1; in-process runs match them bit for bit with one thread."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _params(**train) -> Params:
    raw = json.loads(json.dumps(RAW))
    for key, value in train.items():  # e.g. pretrain={"base_lr": 1.0}
        raw["train"][key] = raw["train"][key] | value if isinstance(value, dict) else value
    return parse_params(raw)


def _pretrain(params: Params, dataset_dir: Path, run_dir: Path, log: bool = False):
    return run_phase("pretrain", model_params=params.model, data=params.data, train_params=params.train,
                     params_digest=params.digest(), dataset_dir=dataset_dir, categories=params.data.categories,
                     out_dir=run_dir / "model", checkpoint_dir=run_dir / "checkpoint",
                     log_dir=run_dir / "live" if log else None)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(dataset_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of one uninterrupted single-process run of STEPS steps."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = _pretrain(_params(), dataset_dir, run_dir)
    assert (result.total_steps, result.resumed_from) == (STEPS, 0)
    return _weights(run_dir)


def _stage(run_dir: Path, dataset_dir: Path, params: Params | dict, *extra: str) -> subprocess.Popen:
    """The real pretrain stage in a subprocess, one thread per process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = params if isinstance(params, dict) else params.model_dump(mode="json")
    (run_dir / "params.yaml").write_text(yaml.safe_dump(raw))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages" / "pretrain.py"), "--params", str(run_dir / "params.yaml"),
         "--data", str(dataset_dir), "--out", str(run_dir / "model"), "--checkpoint", str(run_dir / "checkpoint"),
         *extra], cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


# ---------------------------------------------------------------------------------------------- code digest
def test_code_digest_follows_the_training_code_only(tmp_path):
    package = tmp_path / "diyt"
    shutil.copytree(ROOT / "src" / "diyt", package, ignore=shutil.ignore_patterns("__pycache__"))
    base = code_digest(package)
    assert base == code_digest()  # where the package lies does not count
    (package / "train" / "__pycache__").mkdir()
    (package / "train" / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"compiled")
    (package / "eval" / "scratch.py").write_text("x = 1\n")  # outside the training code
    (package / "model" / ".#lock.py").symlink_to(package / "nowhere.py")  # an editor's dangling lock link
    loop_py = package / "train" / "loop.py"
    loop_py.write_bytes(loop_py.read_bytes().replace(b"\n", b"\r\n"))  # a checkout with other line endings
    assert code_digest(package) == base
    loop_py.write_text(loop_py.read_text() + "# changed\n")
    assert code_digest(package) != base
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]["deps"]
    assert {f"src/diyt/{entry}" for entry in TRAINING_CODE} <= set(deps)


# ------------------------------------------------------------------------------------------------ schedule
def test_lr_warmup_then_half_cosine_to_min_lr():
    kw = {"peak": 1.0, "min_lr": 0.1, "warmup_steps": 10, "total_steps": 110}
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)  # warmup ends at the peak
    assert lr_at(60, **kw) == pytest.approx(0.55)  # cosine midpoint: (peak + min) / 2
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(109, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 99 / 100)))
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(10, 110))
    assert lr_at(0, peak=1.0, min_lr=0.0, warmup_steps=0, total_steps=4) == 1.0  # no warmup: starts at the peak
    assert peak_lr(1.5e-4, 512) == pytest.approx(3e-4)  # lr = base_lr * batch / 256


# ------------------------------------------------------------------------------------------------- batches
def test_ranks_split_each_global_batch_and_resume_mid_epoch(dataset_dir):
    dataset = train_images(dataset_dir, CATEGORIES, _params().data, 32, seed=3)
    assert len(dataset) == 16  # "train" only: the 2 "val" images of each category stay out
    one = Batches(dataset, 4, phase="pretrain", seed=3)
    two = [Batches(dataset, 4, phase="pretrain", seed=3, rank=r, world_size=2) for r in range(2)]
    whole = [i.tolist() for _, i in one.epoch(1)]
    shares = [[i.tolist() for _, i in b.epoch(1)] for b in two]
    assert len(whole) == 4 and all(len(s) == 4 for s in shares)
    for k, batch in enumerate(whole):  # rank r holds rows r::2 of the global batch, in order
        assert batch[0::2] == shares[0][k] and batch[1::2] == shares[1][k]
    assert [i.tolist() for _, i in one.epoch(1, start=2)] == whole[2:]
    assert whole != [i.tolist() for _, i in one.epoch(2)]  # a new permutation each epoch
    a, b = next(one.epoch(1)), next(one.epoch(1))
    assert torch.equal(a[0], b[0])  # augmentation is a function of (seed, epoch, index), not of a stream
    assert not torch.equal(dataset[(1, 0)][0], dataset[(2, 0)][0]) or not torch.equal(
        dataset[(1, 1)][0], dataset[(2, 1)][0])


def test_batch_larger_than_the_dataset_is_named(dataset_dir):
    dataset = train_images(dataset_dir, CATEGORIES, _params().data, 32, seed=0)
    with pytest.raises(ConfigError, match=r"train.finetune.batch_size: 17 is larger than the dataset \(16 train"):
        Batches(dataset, 17, phase="finetune", seed=0)
    with pytest.raises(ConfigError, match=r"train.pretrain.batch_size: 6 does not split over train.nproc 4"):
        Batches(dataset, 6, phase="pretrain", seed=0, world_size=4)


# ------------------------------------------------------------------------------------ torchrun, resume, ...
def test_more_processes_than_gpus_is_named_before_torchrun_starts(monkeypatch):
    # the count of visible GPUs is the machine's; here it is set, since this test must also run without one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"train.nproc: 2 processes, but only 1 CUDA device\(s\) are visible"):
            relaunch_under_torchrun(2, device)


def test_two_processes_under_torchrun_match_one(dataset_dir, reference, tmp_path):
    params = _params(nproc=2)
    out = _finish(_stage(tmp_path, dataset_dir, params))
    assert f"pretrained {STEPS} steps" in out
    _assert_same(_weights(tmp_path), reference, atol=1e-5)
    assert (tmp_path / "checkpoint" / "checkpoint.safetensors").is_file()


def test_feature_target_under_torchrun_matches_one_process(dataset_dir, tmp_path):
    """A frozen backbone's cached maps under DDP: the same global batches, the same weights."""
    raw = json.loads(json.dumps(RAW))
    raw["model"]["target"], raw["data"]["normalize"] = "features", "tf"
    raw["train"]["pretrain"]["steps"] = 6
    _finish(_stage(tmp_path / "one", dataset_dir, raw))
    raw["train"]["nproc"] = 2
    _finish(_stage(tmp_path / "two", dataset_dir, raw))
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert any(k.startswith("source.backbone.") for k in one)  # the bundle-ready weights carry the backbone
    _assert_same(two, one, atol=1e-5)


def test_kill_9_then_restart_ends_bit_identical(dataset_dir, reference, tmp_path):
    proc = _stage(tmp_path, dataset_dir, _params())
    checkpoint = tmp_path / "checkpoint" / "checkpoint.safetensors"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model" / "model.safetensors").exists()
    stale = checkpoint.parent / ".checkpoint.safetensors.abcd1234.tmp"  # as a kill in the middle of a write leaves
    stale.write_bytes(b"half")
    out = _finish(_stage(tmp_path, dataset_dir, _params()))
    assert not stale.exists()
    resumed = int(out.split("resuming ")[1].split(" at step ")[1].split("/")[0])
    assert 0 < resumed < STEPS and resumed % 2 == 0
    _assert_same(_weights(tmp_path), reference)


def test_two_runs_are_bit_identical_and_logged(dataset_dir, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dvclive looks for a repository from the working directory
    result = _pretrain(_params(), dataset_dir, tmp_path, log=True)
    _assert_same(_weights(tmp_path), reference)
    assert result.images_per_s > 0 and np.isfinite(result.last_loss)
    loss = (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    lr = (tmp_path / "live" / "plots" / "metrics" / "lr.tsv").read_text().splitlines()
    assert loss[0] == "step\tloss" and [int(r.split("\t")[0]) for r in loss[1:]] == list(range(STEPS))
    assert float(lr[1].split("\t")[1]) == 0.0 and float(lr[4].split("\t")[1]) == pytest.approx(peak_lr(0.05, 4))


@pytest.mark.skipif(not cpu_has_bf16_matmul(), reason="bf16 autocast runs on CPUs with AMX only")
def test_bf16_autocast_on_a_cpu_is_deterministic_and_close_to_float32(dataset_dir, reference, tmp_path,
                                                                     monkeypatch):
    params = _params(amp=True)
    assert start("cpu", amp=True, compile=False, num_workers=0).amp
    _pretrain(params, dataset_dir, tmp_path / "a")
    _pretrain(params, dataset_dir, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    _assert_same(a, b)  # bf16 on a CPU is as deterministic as float32
    gaps = [float((a[k] - reference[k]).abs().max()) for k in a if not k.startswith("source.")]
    assert 0 < max(gaps) < 0.05  # bf16 rounding (~5e-3 here), not a different run
    with monkeypatch.context() as m:  # a bf16 run cut short is not resumed in float32
        _crash_at(9, m)
        with pytest.raises(Crash):
            _pretrain(params, dataset_dir, tmp_path / "c")
    with pytest.raises(DiytError, match=r"of other params, data or code \(precision 'bf16' -> 'float32'\)"):
        _pretrain(_params(), dataset_dir, tmp_path / "c")


def test_attention_stays_float32_under_cpu_autocast():
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
        linear = torch.nn.Linear(8, 8)(q)
    assert out.dtype == torch.float32 and linear.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


class Crash(Exception):
    pass


def _crash_at(step: int, monkeypatch) -> None:
    """Make the loop die when it asks for the lr of `step`, as an interruption would."""
    real = loop.lr_at

    def lr_or_crash(s, **kw):
        if s == step:
            raise Crash
        return real(s, **kw)

    monkeypatch.setattr(loop, "lr_at", lr_or_crash)


def test_foreign_checkpoint_is_refused_and_its_own_run_resumes(dataset_dir, reference, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        _crash_at(9, m)
        with pytest.raises(Crash):
            _pretrain(_params(), dataset_dir, tmp_path, log=True)
    checkpoint = tmp_path / "checkpoint" / "checkpoint.safetensors"
    with pytest.raises(DiytError, match=rf"{checkpoint}: an unfinished run \(step 8/{STEPS}\) of other params, data or "
                                        r"code \(train.pretrain.base_lr 0.05 -> 0.1\); delete the checkpoint"):
        _pretrain(_params(pretrain={"base_lr": 0.1}), dataset_dir, tmp_path)
    result = _pretrain(_params(), dataset_dir, tmp_path, log=True)
    assert result.resumed_from == 8
    _assert_same(_weights(tmp_path), reference)
    steps = [int(r.split("\t")[0]) for r in
             (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(STEPS))  # the rows logged after the checkpoint were replaced, not repeated
    # a finished run is not resumed: other params simply train from scratch over it
    assert _pretrain(_params(pretrain={"steps": 4}), dataset_dir, tmp_path).resumed_from == 0


def test_files_are_safetensors_and_nothing_is_pickled(dataset_dir, tmp_path):
    _pretrain(_params(pretrain={"steps": 2}), dataset_dir, tmp_path)
    for path in (tmp_path / "model" / "model.safetensors", tmp_path / "checkpoint" / "checkpoint.safetensors"):
        blob = path.read_bytes()
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + size])  # safetensors: u64 header length, JSON header, raw tensors
        assert not blob.startswith(b"\x80") and b"PK\x03\x04" not in blob[:4]  # neither pickle nor torch zip
        assert all(v["dtype"] in ("F32", "U8", "I64") for k, v in header.items() if k != "__metadata__")
    weights = _weights(tmp_path)
    model = build_model(_params().model)
    assert weights.keys() == model.state_dict().keys()
    model.load_state_dict(weights)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["arch"]["embed_dim"] == 32 and config["normalize"] == "imagenet"
    assert config["model"] == _params().model.model_dump(mode="json") and config["steps"] == 2
    assert config["params_digest"] == _params(pretrain={"steps": 2}).digest()
    state = load_file(tmp_path / "checkpoint" / "checkpoint.safetensors")
    assert {"rng.torch", "rng.masking", "rng.numpy", "rng.python"} <= state.keys()
    assert any(k.startswith("optim.") and k.endswith(".exp_avg_sq") for k in state)


def test_a_checkpoint_is_written_byte_for_byte_alike_and_reads_back(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    run = RunState(1, 2, {"phase": "pretrain", "train": {"seed": 0, "steps": 2}, "data": {"path": "données"}})
    paths = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for path in paths:  # the library alone writes its metadata in another order each time
        save_checkpoint(path, model=model, optimizer=optimizer, generator=torch.Generator().manual_seed(0), run=run)
    assert len({path.read_bytes() for path in paths}) == 1
    assert read_run(paths[0]) == run
    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.AdamW(other.parameters())
    resume(paths[0], model=other, optimizer=other_optimizer, generator=torch.Generator())
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)
    theirs, ours = other_optimizer.state_dict()["state"][0], optimizer.state_dict()["state"][0]
    assert torch.equal(theirs["exp_avg_sq"], ours["exp_avg_sq"])


def test_non_finite_loss_stops_naming_step_and_batch(dataset_dir, tmp_path):
    params = _params(pretrain={"base_lr": 1e30, "grad_clip": None, "warmup_steps": 0})
    dataset = train_images(dataset_dir, CATEGORIES, params.data, 32, seed=0)
    torch.manual_seed(0)
    model = build_model(params.model)
    expected = (r"non-finite loss \((nan|inf)\) at step 1, batch of dataset indices \[\d+, \d+, \d+, \d+\] "
                r"\((weave|nut)/train/good/\d+.png, .*\); lower train.pretrain.base_lr or set train.pretrain.grad_clip")
    with pytest.raises(loop.NonFiniteLoss, match=expected):
        train(model, dataset, params.train.pretrain, phase_name="pretrain", seed=0,
              runtime=Runtime(torch.device("cpu")),
              checkpointing=Checkpointing(tmp_path / "ckpt.safetensors", 100, {}))
    assert not (tmp_path / "ckpt.safetensors").exists()


def test_finetune_stage_starts_from_the_pretrained_weights(dataset_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = _params(pretrain={"steps": 2})
    _pretrain(params, dataset_dir, tmp_path / "pre")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    sys.path.insert(0, str(ROOT / "stages"))
    try:
        import finetune
    finally:
        sys.path.remove(str(ROOT / "stages"))
    args = ["--params", "params.yaml", "--data", str(dataset_dir), "--init", "pre/model", "--out", "ft",
            "--checkpoint", "ft/checkpoint"]
    with pytest.raises(SystemExit):
        finetune.main([*args, "--category", "stone"])
    assert "--category stone: not in data.categories (weave, nut)" in capsys.readouterr().err
    finetune.main([*args, "--category", "nut"])
    assert "fine-tuned nut 4 steps" in capsys.readouterr().out
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (config["phase"], config["categories"]) == ("finetune", ["nut"])
    assert read_run(tmp_path / "ft" / "checkpoint" / "checkpoint.safetensors").finished  # kept beside the model
    # 4 steps at lr <= 5e-4 * 4 / 256 move the pre-trained weights by ~1e-5, a fresh init is ~0.1 away
    pre, fine = load_file(tmp_path / "pre/model/model.safetensors"), load_file(tmp_path / "ft/model.safetensors")
    head = "decoder.head.weight"
    assert 0 < (fine[head] - pre[head]).abs().max() < 1e-3
    assert (build_model(params.model).state_dict()[head] - pre[head]).abs().max() > 1e-2
