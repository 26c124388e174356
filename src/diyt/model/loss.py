"""The reconstruction loss: MSE per patch, on the hidden patches (MAE) or on all, against raw or per-patch
normalised targets (MAE's `norm_pix_loss`), and the way back from the normalised space for scoring."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossOn = Literal["masked", "all"]
EPS = 1e-6


class RawTarget:
    """Targets as they are."""

    def normalize(self, target: Tensor) -> Tensor:
        return target

    def denormalize(self, pred: Tensor, target: Tensor) -> Tensor:
        return pred


class PatchNormTarget:
    """Each patch's target standardised over its own values (MAE's norm_pix_loss): (N, L, T) -> (N, L, T)."""

    def _stats(self, target: Tensor) -> tuple[Tensor, Tensor]:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)
        return mean, (var + EPS).sqrt()

    def normalize(self, target: Tensor) -> Tensor:
        mean, std = self._stats(target)
        return (target - mean) / std

    def denormalize(self, pred: Tensor, target: Tensor) -> Tensor:
        """The prediction back in the target's space, with the mean and spread of the true target patch."""
        mean, std = self._stats(target)
        return torch.addcmul(mean, pred, std)


def target_norm(norm_pix_loss: bool) -> RawTarget | PatchNormTarget:
    return PatchNormTarget() if norm_pix_loss else RawTarget()


def hidden_weight(mask: Tensor) -> Tensor:
    return mask


def all_weight(mask: Tensor) -> Tensor:
    return torch.ones_like(mask)


LOSS_WEIGHTS = {"masked": hidden_weight, "all": all_weight}


def patch_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over the weighted patches of the per-patch MSE: (N, L, T), (N, L, T), (N, L) -> ()."""
    per_patch = (pred - target).square().mean(dim=-1)  # (N, L)
    weight = weight.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum()
