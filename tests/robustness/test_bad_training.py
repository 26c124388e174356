"""Bad inputs met by training and evaluation: damaged prepared data, checkpoints and weights that are not
safetensors (a pickle is never unpickled), a foreign checkpoint, a missing model. Each stops the stage in one
line naming the file and what to do, and leaves no output of the stage behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors
from PIL import Image
from safetensors.torch import load_file, save_file

import badfiles as bf
import evil
from clirun import call, refused, stage, untouched
from conftest import CATEGORY, MICRO
from diyt.train import checkpoint as ckpt

DAMAGED = "the prepared data is damaged: run the prepare stage again (dvc repro -f prepare)"


def outputs(project, name: str) -> list:
    return {"pretrain": [project.pretrained], "finetune": [project.model],
            "evaluate": [project.reports, project.bundle]}[name]


def refuses(project, name: str, *needles: str) -> str:
    """Run stage `name` with its outputs removed first: it must refuse, and write none of them."""
    for out in outputs(project, name):
        shutil.rmtree(out)
    message = refused(call(stage(name), getattr(project, f"{name}_args")()), *needles)
    for out in outputs(project, name):
        assert not out.exists(), out
    untouched(project.root)
    return message


@pytest.mark.parametrize("name", ["pretrain", "evaluate"])
@pytest.mark.parametrize("make", [bf.corrupt, bf.truncated, bf.zero_byte])
def test_damaged_prepared_image(project, name, make):
    image = bf.write(project.category / "train" / "good" / "000.png" if name == "pretrain"
                     else project.category / "test" / "good" / "000.png", make())
    refuses(project, name, f"{image}: not a readable image", DAMAGED)


def test_prepared_mask_missing(project):
    mask = next((project.category / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    refuses(project, "evaluate", f"{mask}: image not found; {DAMAGED}")


def test_malformed_manifest(project):
    (project.category / "manifest.csv").write_text("path,split\nx.png\n")
    refuses(project, "pretrain", f"{project.category / 'manifest.csv'}: malformed manifest",
            "run the prepare stage again")


@pytest.mark.parametrize("make", [evil.pickled_weights, evil.raw_pickle], ids=["torch-zip", "bare-pickle"])
@pytest.mark.parametrize("name, weights", [("finetune", "pretrained"), ("evaluate", "model")])
def test_weights_that_are_a_pickle_are_never_unpickled(project, tmp_path, make, name, weights):
    marker = tmp_path / "unpickled"
    path = getattr(project, weights) / "model.safetensors"
    path.write_bytes(make(marker))
    refuses(project, name, f"{path}: not a readable safetensors file", "delete it and train again")
    assert not marker.exists()


@pytest.mark.parametrize("make", [evil.pickled_weights, lambda _: bf.truncated(), lambda _: b""],
                         ids=["pickle", "garbage", "zero-byte"])
def test_checkpoint_that_is_not_safetensors(project, tmp_path, make):
    marker = tmp_path / "unpickled"
    checkpoint = project.root / "checkpoints" / "pretrain" / "checkpoint.safetensors"
    checkpoint.write_bytes(make(marker))
    refuses(project, "pretrain", f"{checkpoint}: not a readable checkpoint", "delete it to train from scratch")
    assert not marker.exists()


def test_truncated_checkpoint(project):
    checkpoint = project.root / "checkpoints" / "pretrain" / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:5000])
    refuses(project, "pretrain", f"{checkpoint}: not a readable checkpoint", "delete it to train from scratch")


def killed_at_step_1(project, **recorded) -> tuple[dict, Path]:
    """A 4-step pre-training whose checkpoint is left as a run killed after step 1, its fingerprint changed by
    `recorded` (as a run begun under other conditions would have written it): (train params, checkpoint)."""
    four_steps = {**MICRO["train"], "pretrain": {**MICRO["train"]["pretrain"], "steps": 4}}
    project.set_params(train=four_steps)
    checkpoint = project.root / "checkpoints" / "pretrain" / "checkpoint.safetensors"
    checkpoint.unlink()
    assert call(stage("pretrain"), project.pretrain_args()).code == 0
    with safetensors.safe_open(checkpoint, "pt") as f:  # the finished checkpoint, rewound to step 1
        meta = f.metadata()
    fingerprint = json.dumps({**json.loads(meta["fingerprint"]), **recorded})
    save_file(load_file(checkpoint), checkpoint, metadata={**meta, "step": "1", "fingerprint": fingerprint})
    return four_steps, checkpoint


def test_unfinished_checkpoint_of_other_params(project):
    """A run killed at step 1 of 4, then started again under another seed: refused, naming the change."""
    four_steps, checkpoint = killed_at_step_1(project)
    assert ckpt.read_run(checkpoint).fingerprint["code"] == ckpt.code_digest()  # the training code it ran
    project.set_params(train={**four_steps, "seed": 7})
    refuses(project, "pretrain", f"{checkpoint}: an unfinished run (step 1/4) of other params, data or code",
            "train.seed 0 -> 7", "delete the checkpoint to train from scratch")
    assert ckpt.read_run(checkpoint).step == 1  # the refused run left it as it was


def test_unfinished_checkpoint_of_other_train_images(project):
    """A run killed at step 1 of 4, then started again on a train image that changed since: refused, not mixed."""
    _, checkpoint = killed_at_step_1(project)
    image = sorted((project.category / "train" / "good").glob("*.png"))[0]
    with Image.open(image) as img:
        Image.fromarray(255 - np.asarray(img)).save(image)  # same size and count, other pixels
    refuses(project, "pretrain", f"{checkpoint}: an unfinished run (step 1/4) of other params, data or code",
            "train_images", "delete the checkpoint to train from scratch")
    assert ckpt.read_run(checkpoint).step == 1


def test_unfinished_checkpoint_of_other_code(project):
    """A run begun under other training code (as its fingerprint records it): refused, naming the code's digest."""
    _, checkpoint = killed_at_step_1(project, code="0" * 12)
    refuses(project, "pretrain", f"{checkpoint}: an unfinished run (step 1/4) of other params, data or code",
            f"code '{'0' * 12}' -> '{ckpt.code_digest()}'")


def test_finetune_of_a_category_not_in_params(project):
    args = project.finetune_args()
    args[args.index(CATEGORY)] = "gadget"
    refused(call(stage("finetune"), args), "--category gadget: not in data.categories (weave)")


@pytest.mark.parametrize("part", ["config.json", "model.safetensors"])
def test_evaluate_without_a_trained_model(project, part):
    (project.model / part).unlink()
    refuses(project, "evaluate", f"{project.model / part}: ", "train")


def test_pretrained_weights_of_another_model(project):
    """Fine-tuning from weights of another architecture names the mismatched keys and what to do."""
    project.set_params(model={**MICRO["model"], "embed_dim": 64})
    refuses(project, "finetune", f"{project.pretrained / 'model.safetensors'}: weights do not fit this model",
            "run the stage that writes them again")
