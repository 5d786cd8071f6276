"""CoMo: CLIP's zero-shot classifier plus two few-shot caches, one keyed by CLIP's image features and one by a
self-supervised backbone's (DINO), blended per image by how much each agrees with the zero-shot prediction.

Zhang et al., 2022 ("Collaboration of Pre-trained Models Makes Better Few-shot Learner", arXiv 2209.12255): CLIP,
DINO and DALL-E. CoMo's own code was not released; its successor by the same authors, CaFo (CVPR 2023,
OpenGVLab/CaFo, = ZrrSkywalker/CaFo), releases the same cache model, and the formulation here is its code's
(utils.py `logits_fuse` with normalize='mean', `search_ensemble_hp`; main.py `run_ensemble_tip_dalle_adapter_F`):

    z(l)     = (l - mean(l)) / std(l) per image over the classes (torch.std: unbiased)
    cache_m  = exp(-beta * (1 - f_m keys_m^T)) values        m in {CLIP, DINO}, one beta for both
    w_m      = softmax_m( <z(cache_m), z(zero_shot)> )      the ensemble weights, per image
    logits   = zero_shot + alpha * sum_m w_m z(cache_m)

Left out: the paper's generated-image augmentation (DALL-E images of each class added to the few-shot set, CaFo's
`dalle_*` loaders; Stable Diffusion in CaFo's Caltech-101 configs): the caches hold the run's training images only.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
import timm.data
from torch import nn

from petlbench.backbone import BackboneSpec, check_model_name, create_backbone
from petlbench.errors import UserError
from petlbench.options import parse_pairs


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """Each row over the classes to mean 0 and (unbiased) std 1: `logits_fuse`'s 'mean' normalisation."""
    return (logits - logits.mean(-1, keepdim=True)) / logits.std(-1, keepdim=True)


def ensemble_weights(zero_shot: torch.Tensor, caches: list[torch.Tensor]) -> torch.Tensor:
    """(B, M): per image, a softmax over the caches of each standardised cache's dot product with the standardised
    zero-shot logits: a cache that agrees with CLIP's zero-shot prediction weighs more."""
    anchor = standardise(zero_shot)
    return torch.stack([(standardise(c) * anchor).sum(-1) for c in caches], dim=-1).softmax(-1)


def fuse(zero_shot: torch.Tensor, caches: list[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """The caches' standardised logits mixed by `ensemble_weights` (or given (B, M) or (M,) weights: an ablation)."""
    weights = ensemble_weights(zero_shot, caches) if weights is None else weights.expand(len(zero_shot), len(caches))
    return sum(w.unsqueeze(-1) * standardise(c) for w, c in zip(weights.unbind(-1), caches))


def combine(zero_shot: torch.Tensor, caches: list[torch.Tensor], alpha: float | torch.Tensor,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """CoMo's logits: the zero-shot logits plus alpha times the fused caches."""
    return zero_shot + alpha * fuse(zero_shot, caches, weights)


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Tip-Adapter's cache read-out of the affinities (B, N) of unit features with the keys."""
    return torch.exp(-beta * (1 - affinity)) @ values


@torch.no_grad()
def search(zero_shot: torch.Tensor, affinities: list[torch.Tensor], values: torch.Tensor, labels: torch.Tensor,
           betas: list[float], alphas: list[float]) -> tuple[float, float, float]:
    """(beta, alpha, accuracy): the first best on these (validation) logits in beta-major order with strict
    improvement, as `search_ensemble_hp`; one beta for every cache. The fusion does not depend on alpha, so it is
    computed once per beta."""
    best = (betas[0], alphas[0], -1.0)
    for beta in betas:
        fused = fuse(zero_shot, [cache_logits(a, values, beta) for a in affinities])
        for alpha in alphas:
            accuracy = ((zero_shot + alpha * fused).argmax(-1) == labels).float().mean().item()
            if accuracy > best[2]:
                best = (beta, alpha, accuracy)
    return best


class SideTower(nn.Module):
    """A frozen image model beside CLIP's tower (`ClipVisionTransformer.side`): its pooled features of the same
    input image. The image arrives normalised with CLIP's mean and std; `renormalise` (the second model's own
    mean/std) re-expresses it for a model trained on another normalisation, `size` resizes it (bicubic) for a model
    built for another input size."""

    def __init__(self, model: nn.Module, renormalise: tuple[tuple, tuple, tuple, tuple] | None = None,
                 size: tuple[int, int] | None = None):
        super().__init__()
        self.model = model
        self.renormalise = renormalise  # (clip mean, clip std, own mean, own std), each three floats
        self.size = tuple(size) if size else None
        self.out_features = model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.renormalise is not None:
            view = [torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in self.renormalise]
            clip_mean, clip_std, mean, std = view
            x = (x * clip_std + clip_mean - mean) / std
        if self.size and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)
        return self.model(x)


def side_tower(name: str, args: list[str], checkpoint: str | None, pretrained: bool, own_normalisation: bool,
               clip_model: nn.Module) -> SideTower:
    """The second backbone, frozen, through petlbench.backbone as every backbone is built: timm's `name` with
    `args` ("key=value" items), weights from a local `checkpoint` (timm's state dict), timm's hub, or random.
    Planning's meta-device build fetches and reads nothing."""
    meta = next(clip_model.parameters()).is_meta
    where = f"method como: option dino={name}"
    try:
        check_model_name(name)
        spec = BackboneSpec(name, parse_pairs("+".join(args), "+", f"{where}: dino_args"),
                            checkpoint=None if meta else checkpoint_file(checkpoint), pretrained=pretrained and not meta)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    try:
        model = create_backbone(spec, num_classes=0)
    except UserError as exc:
        fetched = spec.pretrained and not spec.checkpoint
        if fetched and builds(dataclasses.replace(spec, pretrained=False)):
            raise UserError(f"{where}: could not fetch timm's weights for it; give dino_checkpoint=PATH (a local "
                            f"file of timm's state dict for {name}) or dino_pretrained=false") from None
        raise UserError(f"{where}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    own = timm.data.resolve_data_config({}, model=model)
    clip_cfg = getattr(clip_model, "pretrained_cfg", None) or {}
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or tuple(own["input_size"][1:])
    renormalise = None
    if own_normalisation:
        renormalise = tuple(tuple(float(v) for v in t)
                            for t in (clip_cfg["mean"], clip_cfg["std"], own["mean"], own["std"]))
    return SideTower(model, renormalise, tuple(size))


def checkpoint_file(checkpoint: str | None) -> str | None:
    """The DINO tower's local weights: named as given, refused in one line when the file is not there."""
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise UserError(f"method como: option dino_checkpoint={checkpoint}: no such file")
    return checkpoint


def builds(spec: BackboneSpec) -> bool:
    """Whether timm builds the spec's architecture (on the meta device: nothing fetched, no memory)."""
    try:
        with torch.device("meta"):
            create_backbone(spec, num_classes=0)
        return True
    except UserError:
        return False
