"""DiyT's own pipeline in one process, for the benchmarks: params with `key=value` overrides, then prepare,
pre-train, fine-tune per category and evaluate, without the per-image figures of the `evaluate` stage."""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from diyt.bundle import load_trained
from diyt.config import KNOWN_CATEGORIES, ConfigError, Params, load_params
from diyt.eval.evaluate import evaluate_category
from diyt.io import write_json
from diyt.model.map_cache import MapCache
from diyt.train.checkpoint import fingerprint_digest
from diyt.train.distributed import pick_device
from diyt.train.runner import run_phase


def with_overrides(raw: dict, items: list[str] | dict[str, object]) -> dict:
    """A copy of `raw` params (nested dicts) with `key=value` overrides applied, string values parsed as YAML
    (as `dvc exp run -S`); a dict maps keys to values."""
    raw = copy.deepcopy(raw)
    pairs = items.items() if isinstance(items, dict) else [_split(item) for item in items]
    for key, value in pairs:
        *parents, leaf = key.split(".")
        node = raw
        for depth, part in enumerate(parents, 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parents[:depth])} is a value, not a section of params")
        try:
            node[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}={value}: not a YAML value ({str(err).splitlines()[0]})") from None
    return raw


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.finetune.epochs=4")
    return key, value


def dataset_params(base: Path, dataset: str, data_path: str | None, scorer: str) -> dict:
    """params.yaml (nested dicts) on `dataset`: its categories, and no 90-degree rotations on a real dataset
    (its parts have an orientation)."""
    raw = load_params(base).model_dump(mode="json")
    if dataset != raw["data"]["source"]:
        raw["data"].update(source=dataset, path=data_path)
        categories = KNOWN_CATEGORIES[dataset]
        if categories is not None:
            raw["data"]["categories"] = list(categories)
        raw["data"]["augment"]["rot90_categories"] = []
    elif data_path is not None:
        raw["data"]["path"] = data_path
    raw["eval"]["scorer"] = scorer
    return raw


@dataclass
class Trained:
    """What one pre-training and its fine-tunings took."""

    train_seconds: float
    pretrain_images_per_s: float


def training_key(params: Params) -> str:
    """What decides the trained weights: every param but the evaluation's."""
    return fingerprint_digest(params.model_dump(mode="json", exclude={"eval"}))


def train_all(params: Params, dataset_dir: Path, work: Path) -> Trained:
    """Pre-train on every category, fine-tune each: `work/models/{pretrain,<category>}`, and `work/trained.json`
    with the times (a frozen backbone's train maps are computed once, into `work/features`). A `work` that
    already holds this training (same data, model and train params) is reused."""
    record = work / "trained.json"
    if record.exists() and (done := json.loads(record.read_text()))["key"] == training_key(params):
        print(f"reusing the models trained in {work} ({done['train_seconds'] / 60:.1f} min)", flush=True)
        return Trained(done["train_seconds"], done["pretrain_images_per_s"])
    common = dict(model_params=params.model, data=params.data, train_params=params.train,
                  params_digest=params.digest(), dataset_dir=dataset_dir, log_dir=None,
                  feature_cache=work / "features")
    began = time.perf_counter()
    pre = run_phase("pretrain", categories=params.data.categories, out_dir=work / "models/pretrain",
                    checkpoint_dir=work / "checkpoints/pretrain", **common)
    for category in params.data.categories:
        run_phase("finetune", categories=[category], out_dir=work / f"models/{category}",
                  checkpoint_dir=work / f"checkpoints/{category}", init_dir=work / "models/pretrain", **common)
    trained = Trained(time.perf_counter() - began, pre.images_per_s)
    write_json(record, {"key": training_key(params), **dataclasses.asdict(trained)})
    return trained


def evaluate_all(params: Params, dataset_dir: Path, work: Path) -> dict[str, dict]:
    """Each category's metrics (as in its metrics.json) from the models `train_all` wrote, plus the seconds
    fitting its error level, its residual whitening and its defect head (`error_level_fit_seconds`,
    `whitening_fit_seconds`, `defect_head_fit_seconds`, 0 without one: part of the training's time)."""
    device = pick_device(params.train.device)
    results = {}
    for category in params.data.categories:
        trained = load_trained(work / f"models/{category}", device)
        ev = evaluate_category(trained.model, dataset_dir / category, trained.normalize, params.eval, device,
                               map_cache=MapCache(work / "features"))
        results[category] = {**ev.metrics, "error_level_fit_seconds": ev.level_seconds or 0.0,
                             "whitening_fit_seconds": ev.whitening_seconds or 0.0,
                             "defect_head_fit_seconds": ev.head_seconds or 0.0}
    return results


def mean_of(results: dict[str, dict], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: sum(m[k] for m in results.values()) / len(results) for k in keys}
