"""DiffFit (Xie et al., ICCV 2023): train every bias, every norm layer and a learned per-channel scale gamma on
each block's attention and MLP branch, gamma initialised to 1 (the model starts unchanged).

As PETL_Vision (OSU-MLB/PETL_Vision model/block.py, experiment/build_model.py), whose VTAB-1k rows petlbench
compares with: x = x + gamma1 * drop_path(ls(attn(norm1(x)))), x = x + gamma2 * drop_path(ls(mlp(norm2(x)))),
with gamma1, gamma2 of width dim per block, plus every bias (patch embedding, qkv, proj, fc1, fc2, norms) and
every norm's weight. On ViT-B/16: biases 768 + 12 x 8448 + 768, norm weights 25 x 768, gammas 24 x 768 =
140,544, PETL_Vision's inserted_parameters.

Here gamma scales the branch's last linear (attention proj, MLP fc2) rather than the branch's sum: the same
function, since drop-path, LayerScale and dropout are per-channel or per-sample multiplications that commute
with a per-channel scale; so gamma folds into that linear (weight' = gamma * weight row-wise, bias' = gamma *
bias) and `merge` gives a plain timm model. Checked against PETL_Vision's block forward on a random ViT-B/16
with random gammas: max abs logit diff 0 (merged: 8.9e-8).

Weight decay: PETL_Vision's rule, every trained tensor decayed (engine/optimizer.py: one AdamW group).
"""
from __future__ import annotations

import torch
from torch import nn

from petlbench.backbones import anatomy, replace_module
from petlbench.errors import UserError
from petlbench.method import Method, unfreeze, unfreeze_biases


class BranchScale(nn.Module):
    """layer(x) * gamma, per output channel; gamma starts at 1 (DiffFit's init)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.layer = layer
        self.gamma = nn.Parameter(torch.ones(layer.out_features))

    def forward(self, x):
        return self.layer(x) * self.gamma

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """The linear with gamma folded in: weight' = gamma * weight (per output row), bias' = gamma * bias."""
        gamma = self.gamma.to(self.layer.weight.dtype)
        self.layer.weight.mul_(gamma[:, None])
        if self.layer.bias is not None:
            self.layer.bias.mul_(gamma)
        return self.layer


class DiffFit(Method):
    name = "difffit"
    description = "train biases, norms and a per-block scale on the attention and MLP branches (folds into them)"
    paper = ("DiffFit (Xie et al., ICCV 2023); VTAB-1k numbers and recipe from PETL_Vision (Mai et al., 2024)")
    families = ("vit", "swin")  # blocks with an attention proj and an MLP fc2 to fold gamma into
    recipe = "noah"  # PETL_Vision: AdamW, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "all"  # see the module docstring
    train_defaults = {"lr": 0.001, "weight_decay": 0.001}
    tune_grid = {"lr": [0.001, 0.01], "weight_decay": [0.0001, 0.001]}
    defaults_source = ("lr 1e-3 (12 of 19 tasks), wd 1e-3 (11 of 19): PETL_Vision's val-selected DiffFit values "
                       "(tune_output/default_vtab/processed_vtab/*/difffit/final_result.json) on its grid "
                       "lr {1e-3, 1e-2} x wd {1e-4, 1e-3} (experiment/config/lr_wd_vtab_processed.yml); gamma "
                       "init 1: model/block.py")

    def check_fit(self, model):
        if any(b.attn_proj is None or b.fc2 is None for b in anatomy(model, self.name).blocks):
            raise UserError(f"method {self.name}: every block needs an attention proj and an MLP fc2 (nn.Linear) "
                            "to hold its scales; this backbone's blocks lack one")

    def apply(self, model):
        body = anatomy(model, self.name)
        for block in body.blocks:
            for layer in (block.attn_proj, block.fc2):
                replace_module(block.module, layer, BranchScale(layer))
        for norm in body.norm_layers(model):
            unfreeze(norm)
        unfreeze_biases(model)
        return model

    def merge(self, model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, BranchScale):
                    setattr(parent, name, child.fold())
        return model
