"""Full fine-tuning: every backbone parameter trains (the upper reference for parameter count).

Weight decay: VPT's rule for its AdamW fine-tuning (KMnP/vpt src/solver/optimizer.py): every tensor but
the biases decays, norm weights and the position and class embeddings included (timm's rule exempts those).
"""
from petlbench.method import ANY_FAMILY, Method, unfreeze
from petlbench.recipes import VPT_FINETUNE, VPT_FINETUNE_GRID, VPT_FINETUNE_SOURCE


class FullFineTuning(Method):
    name = "full"
    description = "fine-tune every parameter of the backbone"
    paper = "baseline; numbers and recipe from VPT (Jia et al., ECCV 2022)"
    families = ANY_FAMILY
    recipe = "vpt"  # the VTAB-1k and FGVC full fine-tuning numbers come from VPT (AdamW, 5 warm-up epochs)
    decay_rule = "vpt"  # see the module docstring
    # base 5e-4 (2.5e-4 at batch 128): in VPT's fine-tuning grid; V-PETL Bench fine-tunes cifar and caltech101
    # at 5e-4. The 1e-4 used before gave 5e-5 and was far from converged.
    train_defaults = {**VPT_FINETUNE, "lr": 0.0005}
    tune_grid = VPT_FINETUNE_GRID
    defaults_source = VPT_FINETUNE_SOURCE + "; base lr 5e-4 from its grid (V-PETL Bench: 5e-4)"

    def apply(self, model):
        unfreeze(model)
        return model

    def merge(self, model):
        return model  # the fine-tuned backbone is a plain timm model
