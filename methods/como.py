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

Two methods: `como` fine-tunes both caches' keys as the released code does (its "learnable" cache model: AdamW lr
0.001, cosine over every step, 20 epochs, batch 256: Tip-Adapter-F's settings, methods.tip_adapter_f, eps included),
`como_free` keeps them as built (training-free, as `tip_adapter`). Both then search alpha and beta on the validation
split (`search_ensemble_hp`'s grid: beta from 0.1 in `beta_steps` steps to `beta_max`, alpha likewise; first best in
beta-major order), never on test; the cache rows that are validation images are left out. The caches and their
read-out are Tip-Adapter's (methods.tip_adapter: TipAdapterHead, CacheKeys, grid; CoMo is a TipAdapter whose
validation search scores the blend).

The DINO tower (option `dino`: a timm name, default `vit_base_patch16_224.dino`; `dino_checkpoint` a local file of
timm's state dict; `dino_args` timm's architecture arguments) is frozen and sees the same input image as CLIP's tower
(`ClipVisionTransformer.side`); its pooled features join CLIP's pooled token as the head's input, so the runner's
hooks and feature cache hand the head both. Its input: the image normalised with CLIP's mean and std, as the
released code feeds DINO (`dino_input=clip`, the default), or re-normalised with the DINO weights' own (ImageNet's)
mean and std (`dino_input=own`); resized (bicubic) when its input size differs from CLIP's.

Departures: the released code uses DINO's ResNet-50 (torchvision; timm holds no DINO ResNet) and OpenAI's RN50
CLIP, keeps the epoch of best *test* accuracy, and searches alpha/beta with the keys before fine-tuning; here any timm
model (default DINO's ViT-B/16), the last epoch, and the search with the keys the run ends with. Its caches average
10 augmented passes (augment_epoch) of each training image, here one un-augmented pass (as `tip_adapter`). The zero-
shot logits use CLIP's own logit scale (100 for OpenAI's weights, as written in the released code).

Left out: the paper's generated-image augmentation (DALL-E images of each class added to the few-shot set, CaFo's
`dalle_*` loaders; Stable Diffusion in CaFo's Caltech-101 configs): the caches and the fine-tuning hold the run's
training images only. Defaults: CaFo's configs/imagenet/16shot.yaml (init_alpha 0.6, init_beta 1, search_scale
[7, 3], search_step [200, 20], lr 0.001, train_epoch 20).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.backbone import file_sha256
from petlbench.errors import UserError
from petlbench.methods.tip_adapter import CacheKeys, TipAdapter, TipAdapterHead
from petlbench.methods.tip_adapter_f import TipAdapterF
from petlbench.options import Range
from petlbench.sidetower import checkpoint_file, side_tower


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


class CoMoHead(TipAdapterHead):
    """Tip-Adapter's head (zero-shot classifier, CLIP cache) with a second cache keyed by the side tower's features.
    Its input is [CLIP's pooled token (width), the side tower's features (dim)]; one label cache serves both keys."""

    def __init__(self, projection, class_embeddings, logit_scale, alpha: float, beta: float, learn_keys: bool,
                 side_dim: int):
        super().__init__(projection, class_embeddings, logit_scale, alpha, beta, learn_keys)
        self.width = projection.shape[0]
        self.side_keys = CacheKeys(side_dim, learn_keys)
        self.in_features = self.width + side_dim

    def method_parts(self) -> tuple[nn.Module, ...]:
        return (self.keys, self.side_keys)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head input's two unit features: CLIP's (after its projection) and the side tower's."""
        return self.image_features(x[:, :self.width]), F.normalize(x[:, self.width:].to(self.proj.weight), dim=-1)

    @torch.no_grad()
    def fill(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        super().fill(features[:, :self.width], labels)
        self.side_keys.weight.data = self.split(features.to(self.proj.weight))[1]

    def affinities(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The zero-shot logits and each cache's affinities (CLIP's, the side tower's) of head inputs x."""
        f, g = self.split(x)
        return self.zero_shot(f), [self.keys(f), self.side_keys(g)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero_shot, affinities = self.affinities(x)
        return combine(zero_shot, [cache_logits(a, self.values, self.beta) for a in affinities], self.alpha)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "side_keys.weight")
        if saved is not None and saved.shape != self.side_keys.weight.shape:
            self.side_keys.weight.data = torch.empty(saved.shape, dtype=saved.dtype, device=self.values.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass
class CoMoConfig:
    dino: str = "vit_base_patch16_224.dino"  # the self-supervised tower: a timm model name
    dino_checkpoint: Optional[str] = None  # its weights from a local file (timm's state dict); else timm's hub
    dino_pretrained: bool = True  # false: random weights (tests, ablations)
    dino_args: list[str] = field(default_factory=list)  # timm's architecture arguments, key=value+key=value
    dino_input: Literal["clip", "own"] = "clip"  # the image as CLIP's normalised it (released code), or DINO's own
    init_alpha: Annotated[float, Range(min=0)] = 0.6  # the caches' weight before (or without) the search
    init_beta: Annotated[float, Range(gt=0)] = 1.0  # the affinities' sharpness before (or without) the search
    search: bool = True  # search alpha and beta on the validation split; False: keep the init values
    beta_max: Annotated[float, Range(gt=0.1)] = 7.0  # search_scale[0]
    alpha_max: Annotated[float, Range(gt=0.1)] = 3.0  # search_scale[1]
    beta_steps: Annotated[int, Range(min=1)] = 200  # search_step[0]
    alpha_steps: Annotated[int, Range(min=1)] = 20  # search_step[1]


WHERE = "method como: option dino"
SOURCE = ("OpenGVLab/CaFo (CoMo's cache model) configs/imagenet/16shot.yaml: init_alpha 0.6, init_beta 1, "
          "search_scale [7, 3], search_step [200, 20], lr 0.001, train_epoch 20")


class CoMo(TipAdapter):
    name = "como"
    description = ("CLIP zero-shot plus CLIP- and DINO-keyed caches blended by agreement with zero-shot (keys "
                   "fine-tuned; alpha, beta chosen on val)")
    paper = "Zhang et al., 2022 (CoMo, arXiv 2209.12255; code: CaFo, CVPR 2023)"
    Config = CoMoConfig  # families, text, closed form and CLIP's own preprocessing: TipAdapter's
    trains = True
    learn_keys = True
    train_defaults = TipAdapterF.train_defaults
    defaults_source = SOURCE
    decay_rule = "all"  # torch.optim.AdamW(chain(dino_adapter, clip_adapter)): every trained tensor decays

    def check_fit(self, model) -> None:
        checkpoint_file(self.config.dino_checkpoint, WHERE)  # at planning too: refused before any run

    def identity(self) -> dict[str, Any]:
        """The options, and the DINO checkpoint's content (the same file elsewhere is the same run)."""
        path = self.config.dino_checkpoint
        return {**super().identity(), **({"dino_checkpoint_sha256": file_sha256(Path(path).expanduser())}
                                         if path and Path(path).expanduser().is_file() else {})}

    def apply(self, model):
        c, text = self.config, model.clip
        try:
            model.side = side_tower(c.dino, c.dino_args, c.dino_checkpoint, c.dino_pretrained, c.dino_input == "own",
                                    model, WHERE)
        except UserError as exc:
            raise UserError(f"{exc} (como's options: dino_checkpoint=PATH, dino_pretrained=false, "
                            "dino_args=key=value+...)") from None
        model.head = CoMoHead(text.projection, text.class_embeddings(text.classnames, text.templates),
                              text.logit_scale, c.init_alpha, c.init_beta, self.learn_keys, model.side.out_features)
        return model

    def fit_closed_form(self, model, features, labels) -> dict[str, Any]:
        return {**super().fit_closed_form(model, features, labels), "dino_features": model.side.out_features}

    @torch.no_grad()
    def search_val(self, head, features, labels, rows, betas, alphas) -> tuple[float, float, float]:
        """Tip-Adapter's validation search (TipAdapter.choose_on_val) over CoMo's blend of both caches."""
        zero_shot, affinities = head.affinities(features)
        return search(zero_shot, [a[:, rows] for a in affinities], head.values[rows], labels.to(rows.device),
                      betas, alphas)


class CoMoFree(CoMo):
    name = "como_free"
    description = "CoMo with its caches as built (training-free); alpha, beta chosen on val"
    trains = False
    learn_keys = False
    train_defaults = {}
