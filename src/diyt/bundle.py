"""A trained model directory: `model.safetensors` (weights) and `config.json` (how to rebuild and feed it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from pydantic import ValidationError

from diyt.config import ModelParams
from diyt.errors import DiytError
from diyt.model import MaskedAutoencoder, build_model
from diyt.train.checkpoint import CONFIG, WEIGHTS, load_into, load_weights


class Trained(NamedTuple):
    model: MaskedAutoencoder
    params: ModelParams
    normalize: str
    config: dict


def load_trained(model_dir: str | Path, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a trained model from its directory, in eval mode on `device`."""
    model_dir = Path(model_dir)
    try:
        config = json.loads((model_dir / CONFIG).read_text())
        params = ModelParams.model_validate(config["model"])
        normalize = config["normalize"]
    except FileNotFoundError:
        raise DiytError(f"{model_dir / CONFIG}: missing; train the model first (dvc repro)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as err:
        raise DiytError(f"{model_dir / CONFIG}: not a DiyT model config ({str(err).splitlines()[0]}); "
                        "train the model again") from None
    model = build_model(params)
    load_into(model, load_weights(model_dir / WEIGHTS), model_dir / WEIGHTS)
    return Trained(model.to(device).eval(), params, normalize, config)
