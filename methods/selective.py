"""Selective tuning as in PETL_Vision (Mai et al., CVPR 2025): fine-tune chosen parts of chosen blocks, nothing else.

PETL_Vision's "Selective Attention / MLP / Block Tuning" (OSU-MLB/PETL_Vision @245d262, experiment/build_model.py,
main.py: `--attention_index` with `--attention_type qkv|proj|full`, `--mlp_index` with `--mlp_type fc1|fc2|full`,
`--block_index`) unfreezes those layers' own weights and biases; the head trains as always, the final norm does not.
Here a part is found through the backbone's anatomy, never by name:

| part | trains | PETL_Vision |
|---|---|---|
| qkv, proj | the attention's fused q, k, v projection; its output projection | attention_type qkv, proj |
| attn | the whole attention module (on a ViT: qkv and proj) | attention_type full |
| fc1, fc2 | the MLP's first, second linear | mlp_type fc1, fc2 |
| mlp | the whole MLP (fc1 and fc2) | mlp_type full |
| block | every parameter of the block, its norms too | block_index |

`blocks` are depth indices, negative ones counting from the end (-1 the last block), so `blocks=-3+-2+-1` is
PETL_Vision's `9 10 11` on ViT-B/16 and the last three blocks of any depth. Several parts and blocks combine
(`part=qkv+mlp`); PETL_Vision's separate index lists for attention and MLP are two of its options at once, one
set of blocks here.

Departure: PETL_Vision matches `f"{i}.attn.qkv"` (and `f"blocks.{i}"`) as substrings of parameter names, so index
1 also trains blocks 11 (and, for `block_index`, 10 and 11), index 0 also block 10; petlbench trains exactly the
blocks given. Every index in the README's commands (9, 10, 11) is unaffected.

Defaults: the README's first selective command (`--attention_index 9 10 11 --attention_type qkv`); PETL_Vision
published no selective runs (its tune_output has none), so no default is a val-selected one. lr 1e-3, wd 1e-4: the
values PETL_Vision's val selection chose for full fine-tuning, the closest of its methods (lr 1e-3 on 19 of its 20
default_vtab rows, wd 1e-4 on 10), from the grid lr {1e-3, 1e-2} x wd {1e-4, 1e-3}, which is the tune grid.

Weight decay: PETL_Vision's rule, every trained tensor decayed (engine/optimizer.py: one AdamW group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from petlbench.backbones import Block, anatomy
from petlbench.errors import UserError
from petlbench.method import Method, unfreeze

Part = Literal["qkv", "proj", "attn", "fc1", "fc2", "mlp", "block"]
SOURCE = ("part qkv of blocks -3..-1 (PETL_Vision's 9 10 11 on ViT-B/16): OSU-MLB/PETL_Vision README, 'Selective "
          "Attention Tuning'; lr 1e-3 (19 of 20 rows), wd 1e-4 (10 of 20): PETL_Vision's val-selected full fine-tuning "
          "(tune_output/default_vtab/processed_vtab/*/full/final_result.json), grid experiment/config/"
          "lr_wd_vtab_processed.yml; no selective runs were published")


@dataclass
class SelectiveConfig:
    part: list[Part] = field(default_factory=lambda: ["qkv"])  # what trains in each chosen block
    blocks: list[int] = field(default_factory=lambda: [-3, -2, -1])  # depth indices; negative: from the end


def part_of(block: Block, part: str) -> nn.Module | None:
    """The module of `block` that `part` names (None where the block lacks it)."""
    return {"qkv": block.qkv, "proj": block.attn_proj, "attn": block.attn, "fc1": block.fc1, "fc2": block.fc2,
            "mlp": block.mlp, "block": block.module}[part]


class Selective(Method):
    name = "selective"
    description = "fine-tune chosen parts (qkv, proj, attn, fc1, fc2, mlp, block) of chosen blocks"
    paper = "Selective tuning of PETL_Vision (Mai et al., CVPR 2025, 'Lessons and Insights from a Unifying Study')"
    Config = SelectiveConfig
    families = ("vit", "swin")  # blocks with an attention (qkv, proj) and an MLP (fc1, fc2)
    recipe = "noah"  # PETL_Vision: AdamW, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "all"  # see the module docstring
    train_defaults = {"lr": 0.001, "weight_decay": 0.0001}
    tune_grid = {"lr": [0.001, 0.01], "weight_decay": [0.0001, 0.001]}
    defaults_source = SOURCE

    def indices(self, depth: int) -> list[int]:
        """The chosen blocks as depth indices 0..depth-1, in order; one line for an index out of range or twice."""
        chosen = []
        for i in self.config.blocks:
            if not -depth <= i < depth:
                raise UserError(f"method {self.name}: option 'blocks' has {i}, but the backbone has {depth} blocks "
                                f"(valid: {-depth}..{depth - 1}, negative counting from the end)")
            if i % depth in chosen:
                raise UserError(f"method {self.name}: option 'blocks' names block {i % depth} twice")
            chosen.append(i % depth)
        return sorted(chosen)

    def check_fit(self, model):
        body = anatomy(model, self.name)
        for i in self.indices(body.depth):
            for part in self.config.part:
                if part_of(body.blocks[i], part) is None:
                    raise UserError(f"method {self.name}: block {i} has no {part!r} (an nn.Linear or module the "
                                    "backbone anatomy finds); choose another part")

    def apply(self, model):
        self.check_fit(model)
        body = anatomy(model, self.name)
        for i in self.indices(body.depth):
            for part in self.config.part:
                unfreeze(part_of(body.blocks[i], part))
        return model

    def merge(self, model):
        return model  # the tuned parts are the backbone's own parameters
