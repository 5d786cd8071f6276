"""GPS (Zhang et al., CVPR 2024): gradient-based parameter selection. One gradient pass over the task's training
data scores every weight of the frozen backbone; in each weight matrix, every neuron (output row) keeps the k input
connections with the largest accumulated gradient magnitude, and only those entries train, with the biases and the
head. Learned from FightingFighting/GPS @72e0c31 (train_gps.py calculate_gradient, utils/pruning.py
prune_by_percentile_gradient_perCell, utils/cuda.py NativeScaler.maks_gradient):

- scored: every weight of two or more dimensions but the head's, the norms', pos_embed and cls_token: on a ViT the
  patch embedding (a conv, its rows flattened over input channels x kernel) and each block's qkv, proj, fc1, fc2;
- the score: one epoch of the training data, gradients summed over its batches (never zeroed), model in train mode,
  of a supervised contrastive loss (SupConLoss, temperature 0.07, on the L2-normalised pooled features of two views of
  each image: `--contrastive --contrast-aug`, 23 of the 24 released scripts), then |sum| per entry, top k per row;
- what trains: the chosen entries, every non-norm bias (qkv, proj, fc1, fc2, patch embedding), LayerScale gammas,
  the head; norms, pos_embed, cls_token stay frozen. No adapter: the issue's "with an adapter" has no counterpart in
  the code (its ViT has only the SSF tuning mode beside GPS's `part`), so none is added.

Structure: each scored layer is wrapped in `SparseDelta`, which holds the frozen layer, an index buffer (rows x k)
and a trainable delta (rows x k), and runs the layer with weight + delta scattered at the index; so exactly
rows x k entries count and train, and the rest cannot move (the code instead zeroes masked gradients, under which
Adam with weight decay would still shrink them; its scripts use wd 0). The delta starts at zero: equal to training
the entries in place. `merge` folds it into the weight. ViT: k x (768 + 12 x 6912) + 83,712 biases = 167,424 at
k = 1 on ViT-B/16 (the published 0.22M adds the heads).

Swin (the code's models/swin_transformer.py): the same rule on every Linear and Conv2d (patch embedding, qkv, proj,
fc1, fc2 and the patch-merging reductions); each attention's relative-position bias table trains whole, as the
code's name rule ("bias" in the name: trainable) makes it, and the absolute position embedding (if any) stays frozen
("pos_embed"). Swin-B at k = 1: 110,208 entries + 108,416 biases + 63,544 table entries = 282,168.

Departures: the two views use random resized crops (scale 0.08-1, ratio 3/4-4/3) and flips only; the code's colour
jitter (p 0.8) and grayscale (p 0.2) are left out (they need un-normalised pixels). The gradient epoch keeps its
last, smaller batch (timm's training loader drops it). `loss=ce` scores with the cross-entropy of the (fresh) head.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from timm.models.swin_transformer import WindowAttention
from torch import nn

from petlbench.method import Method, refuse_above, unfreeze_biases
from petlbench.options import Range


@dataclasses.dataclass
class GPSConfig:
    k: Annotated[int, Range(min=1)] = 1  # input connections trained per neuron (times_para)
    loss: Literal["supcon", "ce"] = "supcon"  # the selection's loss
    temperature: Annotated[float, Range(gt=0)] = 0.07  # SupConLoss's (and its base temperature)
    bias: bool = True  # every non-norm bias trains, as in the code


class SparseDelta(nn.Module):
    """A frozen Linear or Conv2d whose weight gets a trainable delta on k chosen entries of each output row."""

    def __init__(self, layer: nn.Module, k: int):
        super().__init__()
        self.layer = layer
        rows, cols = layer.weight.shape[0], layer.weight[0].numel()
        w = layer.weight
        # a valid mask before any selection (the first k columns); `select` fills in the chosen ones
        self.register_buffer("index", torch.arange(k, device=w.device).expand(rows, k).contiguous())
        self.delta = nn.Parameter(torch.zeros(rows, k, device=w.device, dtype=w.dtype))

    def effective_weight(self) -> torch.Tensor:
        w = self.layer.weight
        return w.reshape(w.shape[0], -1).scatter_add(1, self.index, self.delta.to(w.dtype)).view_as(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, self.effective_weight(), self.layer.bias)
        return self.layer._conv_forward(x, self.effective_weight(), self.layer.bias)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        self.layer.weight.copy_(self.effective_weight())
        return self.layer


def scored_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every Linear and Conv2d outside the classifier."""
    head = set(map(id, model.get_classifier().modules()))
    return [(parent, name, child) for parent in model.modules() if id(parent) not in head
            for name, child in parent.named_children()
            if isinstance(child, (nn.Linear, nn.Conv2d)) and id(child) not in head]


def supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupConLoss (contrast_mode 'all', base temperature = temperature) of (2B, D) features, views stacked."""
    z = F.normalize(features, dim=1)
    n = len(z)
    same = labels.repeat(2)
    positive = (same[:, None] == same[None, :]).float()
    logits = z @ z.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    others = 1.0 - torch.eye(n, device=z.device)
    positive = positive * others
    log_prob = logits - torch.log((torch.exp(logits) * others).sum(1, keepdim=True))
    return -((positive * log_prob).sum(1) / positive.sum(1)).mean()


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image: a random area 8-100% and aspect 3/4-4/3 crop resized back (bilinear), then a coin-flip mirror."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        ch, cw = h, w  # torchvision's fallback: the whole image
        for _ in range(10):
            area = h * w * (0.08 + 0.92 * torch.rand(1, generator=generator).item())
            ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(1, generator=generator).item())
            tw, th = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < tw <= w and 0 < th <= h:
                ch, cw = th, tw
                break
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                             align_corners=False)
        out[i] = crop[0].flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop[0]
    return out


class GPS(Method):
    name = "gps"
    description = "gradient-selected top-k input connections per neuron train (a sparse delta), with biases"
    paper = "GPS (Zhang et al., CVPR 2024)"
    Config = GPSConfig
    families = ("vit", "swin")
    selects = True
    recipe = "noah"  # cosine, 100 epochs, 10 warm-up: GPS's (SSF's) scripts, with their optimizer and batch below
    decay_rule = "timm"  # GPS trains through timm's create_optimizer_v2 (with wd 0 nothing decays anyway)
    train_defaults = {"optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "batch_size": 32}
    tune_grid = {"lr": [0.005, 0.002, 0.001, 0.0003], "weight_decay": [0.0]}
    backbone_defaults = {"drop_path_rate": 0.0, "mean": "backbone", "std": "backbone"}
    defaults_source = ("Adam (24 of 24 released scripts), lr 2e-3 (6 of 24; 6 of 19 VTAB), wd 0 (24 of 24), batch 32 "
                       "(12 of 24; VTAB alone 16 on 11 of 19), drop-path 0 (14 of 24), k 1 (20 of 24), SupCon "
                       "selection (23 of 24), 100 epochs, 10 warm-up: FightingFighting/GPS @72e0c31 "
                       "train_scripts/vit/{vtab,fgvc}/*/train_gps.sh; the checkpoint's own mean/std (SSF's "
                       "resolve_data_config)")

    def check_fit(self, model):
        widths = [layer.weight[0].numel() for _, _, layer in scored_layers(model)]
        refuse_above(self, "option 'k'", self.config.k, min(widths), "the fewest input connections of a neuron")

    def apply(self, model):
        for parent, name, layer in scored_layers(model):
            setattr(parent, name, SparseDelta(layer, self.config.k))
        if self.config.bias:
            for module in model.modules():
                if isinstance(module, SparseDelta):
                    unfreeze_biases(module.layer)
        for module in model.modules():
            if isinstance(module, LayerScale):
                module.gamma.requires_grad_(True)
            if isinstance(module, WindowAttention) and self.config.bias:
                module.relative_position_bias_table.requires_grad_(True)
        return model

    def select(self, model, batches):
        """Sum each scored weight's gradient over one epoch of training batches; per row keep the top k of |sum|."""
        layers = {name: m for name, m in model.named_modules() if isinstance(m, SparseDelta)}
        weights = [m.layer.weight for m in layers.values()]
        sums = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        was_training = model.training
        model.train()  # as the code's calculate_gradient (drop-path, if any, draws)
        for w in weights:
            w.requires_grad_(True)
        try:
            for images, labels in batches:
                loss = self.loss(model, images, labels, generator)
                for total, grad in zip(sums, torch.autograd.grad(loss, weights)):
                    total += grad.float()
        finally:
            for w in weights:
                w.requires_grad_(False)
            model.train(was_training)
        digest = hashlib.sha256()
        for m, total in zip(layers.values(), sums):
            chosen = total.abs().reshape(total.shape[0], -1).topk(self.config.k, dim=1).indices.sort(dim=1).values
            m.index.copy_(chosen)
            digest.update(chosen.cpu().numpy().astype("int64").tobytes())
        return {"loss": self.config.loss, "k": self.config.k, "sha256": digest.hexdigest(),
                "entries": sum(m.delta.numel() for m in layers.values()),
                "layers": {name: m.delta.numel() for name, m in layers.items()}}

    def loss(self, model, images, labels, generator):
        if self.config.loss == "ce":
            return F.cross_entropy(model(images), labels)
        views = torch.cat([random_resized_crop_flip(images, generator) for _ in range(2)])
        features = model.forward_head(model.forward_features(views), pre_logits=True)
        return supcon(features, labels, self.config.temperature)

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SparseDelta):
                    setattr(parent, name, child.fold())
        return model
