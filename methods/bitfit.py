"""BitFit (Ben Zaken et al., 2022): train every bias term of the backbone and nothing else.

Biases are found structurally: each module's own `bias` parameter (linear, conv and norm layers).

Weight decay: VPT's AdamW rule (no decay on biases; KMnP/vpt src/solver/optimizer.py): only the head's
weight decays, the same split as timm's on this trainable set.
"""

from petlbench.method import ANY_FAMILY, Method, unfreeze_biases
from petlbench.recipes import VPT_FINETUNE, VPT_FINETUNE_GRID, VPT_FINETUNE_SOURCE


class BitFit(Method):
    name = "bitfit"
    description = "train all bias terms (linear, conv and norm layers)"
    paper = "BitFit (Ben Zaken et al., ACL 2022); VTAB-1k numbers and recipe from VPT"
    families = ANY_FAMILY
    recipe = "vpt"  # the VTAB-1k BitFit numbers come from VPT's Table 1
    decay_rule = "vpt"  # see the module docstring
    # base 5e-3 (2.5e-3 at batch 128): the top of VPT's fine-tuning grid; PETL_Vision's val-selected BitFit lr is
    # 1e-2 (AdamW, batch 64) on 12 of 19 VTAB-1k tasks. SGD at base 0.5 collapsed on real data (14%).
    train_defaults = {**VPT_FINETUNE, "lr": 0.005}
    tune_grid = VPT_FINETUNE_GRID
    defaults_source = (VPT_FINETUNE_SOURCE + "; base lr 5e-3, the grid value nearest PETL_Vision's val-selected "
                       "1e-2 (12 of 19 tasks)")

    def apply(self, model):
        unfreeze_biases(model)
        return model

    def merge(self, model):
        return model  # trained biases live in the backbone's own parameters
