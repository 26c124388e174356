"""The architecture figure, generated from the configured model rather than drawn once by hand.

The sizes and switches come from `ModelParams` (as the pre-trained model's config.json recorded them); the model
is built on the meta device (no memory, no weights) to read its token grid and count its parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch
from pydantic import ValidationError

from diyt.config import ModelParams
from diyt.errors import DiytError
from diyt.model.masking import num_masked
from diyt.model.presets import ArchConfig

NORM_NAMES = {"dyt": "DyT", "layernorm": "LayerNorm"}
POS_NAMES = {"hybrid": "hybrid: sin-cos\n+ learned table", "sincos": "fixed 2-D sin-cos", "learned": "learned table"}
COLOURS = {  # (face, edge)
    "io": ("#EEEEEE", "#777777"), "embed": ("#DCE6F2", "#4C72B0"), "encoder": ("#A9C4E6", "#4C72B0"),
    "aggregated": ("#F2B48C", "#C8632A"), "fam": ("#FBE3D2", "#C8632A"), "decoder": ("#B9DDBF", "#3E8E4F"),
    "norm": ("#E8E0F0", "#8172B3"), "off": ("#FFFFFF", "#AAAAAA"),
}


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the figure shows, read off the built model."""

    preset: str
    arch: ArchConfig  # the resolved sizes
    grid: tuple[int, int]
    target_dim: int  # values predicted per token
    norm: str
    dyt_alpha: float
    pos_embed: str
    masking: str
    mask_ratio: float
    num_hidden: int
    aggregate_layers: tuple[int, ...]
    aggregate_mode: str
    loss_on: str
    norm_pix_loss: bool
    parameters: dict[str, int]  # per top-level part (source, encoder, aggregator, decoder) and "total"

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def norm_name(self) -> str:
        return NORM_NAMES[self.norm]


def read_model_config(path: Path) -> tuple[ModelParams, str | None]:
    """The `model` section and params digest a training stage recorded in its config.json."""
    remedy = "run the pretrain stage first (dvc repro pretrain)"
    try:
        raw = json.loads(Path(path).read_text())
        return ModelParams.model_validate(raw["model"]), raw.get("params_digest")
    except FileNotFoundError:
        raise DiytError(f"{path}: missing; {remedy}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as err:
        raise DiytError(f"{path}: not a model config ({str(err).splitlines()[0]}); {remedy}") from None


def architecture_spec(params: ModelParams) -> ArchitectureSpec:
    import warnings

    import torch

    from diyt.model.build import build_model

    with torch.device("meta"), warnings.catch_warnings():
        # loading the backbone's weights into meta tensors is a no-op, which torch warns of once per tensor
        warnings.filterwarnings("ignore", message=".*non-meta parameter in the checkpoint to a meta parameter")
        model = build_model(params)
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    arch = params.arch
    return ArchitectureSpec(
        preset=params.preset, arch=arch, grid=tuple(model.source.grid_size), target_dim=model.source.target_dim,
        norm=params.norm, dyt_alpha=params.dyt_alpha, pos_embed=params.pos_embed, masking=params.masking,
        mask_ratio=params.mask_ratio, num_hidden=num_masked(model.num_patches, params.mask_ratio),
        aggregate_layers=tuple(model.aggregator.layers), aggregate_mode=params.aggregate_mode,
        loss_on=params.loss_on, norm_pix_loss=params.norm_pix_loss,
        parameters={**counts, "total": sum(p.numel() for p in model.parameters())})


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def fam_text(spec: ArchitectureSpec) -> str:
    """The aggregation box's label, naming the layers it reads."""
    if not spec.aggregate_layers:
        return "no FeatureAggregationModule (model.aggregate_layers: [])"
    layers = ", ".join(map(str, spec.aggregate_layers))
    k, d, dd = len(spec.aggregate_layers), spec.arch.embed_dim, spec.arch.decoder_embed_dim
    fuse = (f"softmax-weighted sum → Linear {d}→{dd}" if spec.aggregate_mode == "weighted"
            else f"concat ({k}×{d}) → Linear {k * d}→{dd}")
    return (f"FeatureAggregationModule: encoder layers {layers} (orange)\n"
            f"{spec.norm_name} each → {fuse}\n→ added to the decoder's visible tokens")


class _Canvas:
    """Boxes, circles and arrows in data units on one borderless axes."""

    def __init__(self, width: float, height: float) -> None:
        self.fig = Figure(figsize=(width, height))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set(xlim=(0, width), ylim=(0, height))
        self.ax.set_axis_off()

    def box(self, x: float, y: float, w: float, h: float, text: str, kind: str, size: float = 8.5,
            dashed: bool = False) -> None:
        face, edge = COLOURS[kind]
        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08", fc=face,
                                         ec=edge, lw=1.2, ls="--" if dashed else "-", zorder=2))
        self.ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, zorder=3)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], colour: str = "#444444") -> None:
        self.ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, lw=1.3, color=colour,
                                          shrinkA=0, shrinkB=0, zorder=1))

    def text(self, x: float, y: float, text: str, size: float = 9, **kwargs) -> None:
        self.ax.text(x, y, text, fontsize=size, zorder=3, **kwargs)

    def blocks(self, x: float, y: float, w: float, h: float, n: int, kind: str, highlight: tuple[int, ...] = (),
               reverse: bool = False) -> list[float]:
        """n numbered blocks side by side (right to left when `reverse`); returns their centres' x by block."""
        gap = min(0.1, w / n * 0.15)
        bw = (w - gap * (n - 1)) / n
        label = "block {}" if bw > 0.75 else "{}"
        size = 8.5 if bw > 0.3 else 6.5
        centres = []
        for i in range(1, n + 1):
            slot = n - i if reverse else i - 1
            bx = x + slot * (bw + gap)
            self.box(bx, y, bw, h, label.format(i), "aggregated" if i in highlight else kind, size)
            centres.append(bx + bw / 2)
        return centres


def architecture_figure(spec: ArchitectureSpec) -> Figure:
    """Encoder path left to right on top, the aggregation under it, the decoder path right to left below."""
    c = _Canvas(14.0, 6.6)
    s, p, (gr, gc), d, dd = spec.arch.image_size, spec.arch.patch_size, spec.grid, spec.arch.embed_dim, spec.arch.decoder_embed_dim
    visible = spec.num_patches - spec.num_hidden
    n = {k: _millions(v) for k, v in spec.parameters.items()}
    c.text(0.15, 6.3, f"DiyT architecture, preset '{spec.preset}': {n['total']} parameters (patch embed "
                      f"{n.get('source', '?')}, encoder {n['encoder']}, aggregation "
                      f"{n['aggregator'] if spec.aggregate_layers else 'off'}, decoder {n['decoder']})",
           size=11, weight="bold", va="center")
    top, mid, bottom, h = 4.0, 2.45, 0.65, 1.3
    enc_x, enc_w = 7.45, 4.7

    # encoder path
    c.box(0.15, top, 1.35, h, f"Input image\n{s}×{s}×3", "io")
    c.box(1.8, top, 1.6, h, f"Patch embed\nconv {p}×{p}, stride {p}\n{gr}×{gc} = {spec.num_patches} tokens\n"
                            f"→ width {d}", "embed")
    c.box(3.7, top, 1.5, h, f"Positions\n{POS_NAMES[spec.pos_embed]}", "embed")
    c.box(5.5, top, 1.65, h, f"{spec.masking.capitalize()} masking\nratio {spec.mask_ratio:g}\n"
                             f"{spec.num_hidden} hidden, {visible} visible\n(+ [cls] token)", "embed")
    for a, b in ((1.5, 1.8), (3.4, 3.7), (5.2, 5.5), (7.15, enc_x)):
        c.arrow((a, top + h / 2), (b, top + h / 2))
    c.ax.plot([enc_x, 12.45], [top + h / 2] * 2, color="#444444", lw=1.3, zorder=1)
    c.text(enc_x + enc_w / 2, top + h + 0.25, f"Encoder: {spec.arch.depth} × ViT block, width {d}, {spec.arch.num_heads} "
                                              f"heads, MLP {round(d * spec.arch.mlp_ratio)}, {spec.norm_name}",
           ha="center", va="center", size=9.5)
    centres = c.blocks(enc_x, top, enc_w, h, spec.arch.depth, "encoder", spec.aggregate_layers)
    c.arrow((12.15, top + h / 2), (12.45, top + h / 2))
    alpha = f"\nα₀ = {spec.dyt_alpha:g}" if spec.norm == "dyt" else ""
    c.box(12.45, top, 1.4, h, f"{spec.norm_name}{alpha}\nlatent\n(1+{visible})×{d}", "norm")

    # aggregation
    if spec.aggregate_layers:
        c.box(enc_x, mid, enc_w, 0.95, fam_text(spec), "fam", size=8.5)
        for layer in spec.aggregate_layers:
            c.arrow((centres[layer - 1], top), (centres[layer - 1], mid + 0.95), colour=COLOURS["aggregated"][1])
        c.arrow((11.8, mid), (11.8, bottom + h / 2 + 0.2), colour=COLOURS["aggregated"][1])
    else:
        c.box(enc_x, mid, enc_w, 0.95, fam_text(spec), "off", dashed=True)

    # decoder path, right to left
    c.arrow((13.15, top), (13.15, bottom + h))
    c.box(12.45, bottom, 1.4, h, f"Decoder embed\nLinear {d}→{dd}", "embed")
    if spec.aggregate_layers:
        c.ax.add_patch(Circle((11.8, bottom + h / 2), 0.2, fc="white", ec="#444444", lw=1.3, zorder=2))
        c.text(11.8, bottom + h / 2, "+", size=14, ha="center", va="center")
        c.arrow((12.45, bottom + h / 2), (12.0, bottom + h / 2))
        c.arrow((11.6, bottom + h / 2), (11.45, bottom + h / 2))
    else:
        c.arrow((12.45, bottom + h / 2), (11.45, bottom + h / 2))
    c.box(9.65, bottom, 1.8, h, f"+ {spec.num_hidden} mask tokens\nback in patch order\n"
                                f"+ positions\n({spec.pos_embed})", "embed")
    dec_x, dec_w = 7.45, 1.9
    c.ax.plot([7.1, 9.65], [bottom + h / 2] * 2, color="#444444", lw=1.3, zorder=1)
    c.blocks(dec_x, bottom, dec_w, h, spec.arch.decoder_depth, "decoder", reverse=True)
    c.text(dec_x + dec_w / 2, bottom - 0.25, f"Decoder: {spec.arch.decoder_depth} × ViT block, width {dd}, "
                                             f"{spec.arch.decoder_num_heads} heads, {spec.norm_name}",
           ha="center", va="center", size=9.5)
    c.arrow((dec_x, bottom + h / 2), (7.15, bottom + h / 2))
    c.box(5.5, bottom, 1.65, h, f"{spec.norm_name} + Linear head\n{dd}→{spec.target_dim}\n"
                                f"({p}×{p}×3 pixels / token)", "norm")
    c.arrow((5.5, bottom + h / 2), (5.2, bottom + h / 2))
    c.box(3.7, bottom, 1.5, h, f"Reconstruction\n{s}×{s}×3\nevery patch", "io")
    c.arrow((3.7, bottom + h / 2), (3.4, bottom + h / 2))
    where = "hidden" if spec.loss_on == "masked" else "all"
    target = "\n(per-patch normalised)" if spec.norm_pix_loss else ""
    c.box(1.8, bottom, 1.6, h, f"MSE loss\non {where} patches{target}", "io")
    return c.fig


def architecture_rows(spec: ArchitectureSpec) -> list[list[str]]:
    """The same facts as a two-column table, for readers of the Markdown."""
    layers = ", ".join(map(str, spec.aggregate_layers)) or "off"
    return [
        ["preset", spec.preset],
        ["token grid", f"{spec.grid[0]}×{spec.grid[1]} = {spec.num_patches} patches of {spec.arch.patch_size} px "
                       f"({spec.arch.image_size} px input)"],
        ["encoder", f"{spec.arch.depth} blocks, width {spec.arch.embed_dim}, {spec.arch.num_heads} heads, "
                    f"MLP ratio {spec.arch.mlp_ratio:g}"],
        ["FeatureAggregationModule", f"layers {layers}" + (f" ({spec.aggregate_mode})" if spec.aggregate_layers
                                                           else "")],
        ["decoder", f"{spec.arch.decoder_depth} blocks, width {spec.arch.decoder_embed_dim}, "
                    f"{spec.arch.decoder_num_heads} heads"],
        ["norm", spec.norm_name + (f" (α₀ = {spec.dyt_alpha:g})" if spec.norm == "dyt" else "")],
        ["positional embedding", spec.pos_embed],
        ["masking", f"{spec.masking}, ratio {spec.mask_ratio:g} ({spec.num_hidden} of {spec.num_patches} hidden)"],
        ["loss", f"MSE on {'hidden' if spec.loss_on == 'masked' else 'all'} patches"
                 + (", per-patch normalised target" if spec.norm_pix_loss else "")],
        ["parameters", ", ".join(f"{k} {v:,}" for k, v in spec.parameters.items())],
    ]
