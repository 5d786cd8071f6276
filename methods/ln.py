"""LN-Tune (Basu et al., AAAI 2024): train the affine weight and bias of every norm layer of the backbone.

Norms are found by the anatomy (LayerNorm, BatchNorm, GroupNorm, the head's classifier excluded): on ViT-B/16
that is 2 x 768 x (2 x 12 + 1) = 38,400 parameters, PETL_Vision's count. A ResNet's BatchNorms tune the same
way; since their scale trains, their running statistics update in training too (petlbench freezes the
statistics only of BatchNorms whose weight is frozen).

Weight decay: PETL_Vision's rule, every trained tensor decayed (engine/optimizer.py passes all tuned
parameters, head included, to one AdamW group): the default wd 1e-3 and the grid's wd axis come from there.
Under timm's rule (1-d tensors exempt) no norm tensor would ever be decayed.
"""
from petlbench.backbones import anatomy
from petlbench.method import ANY_FAMILY, Method, unfreeze


class LayerNormTuning(Method):
    name = "ln"
    description = "train the weight and bias of every norm layer"
    paper = ("LN-Tune (Basu et al., AAAI 2024, 'Strong Baselines for Parameter Efficient Few-Shot Fine-tuning'); "
             "VTAB-1k numbers and recipe from PETL_Vision (Mai et al., 2024)")
    families = ANY_FAMILY
    recipe = "noah"  # PETL_Vision: AdamW, batch 64, 100 epochs, 10 warm-up, drop-path 0.1
    decay_rule = "all"  # see the module docstring
    train_defaults = {"weight_decay": 0.001}
    tune_grid = {"lr": [0.001, 0.01], "weight_decay": [0.0001, 0.001]}
    defaults_source = ("lr 1e-3 (13 of 19 tasks), wd 1e-3 (12 of 19): PETL_Vision's val-selected LayerNorm "
                       "values (tune_output/default_vtab/processed_vtab/*/ln/final_result.json) on its grid "
                       "lr {1e-3, 1e-2} x wd {1e-4, 1e-3} (experiment/config/lr_wd_vtab_processed.yml)")

    def apply(self, model):
        for norm in anatomy(model, self.name).norm_layers(model):
            unfreeze(norm)
        return model

    def merge(self, model):
        return model  # the tuned norms are the backbone's own parameters
