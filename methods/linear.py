"""Linear probe: the backbone stays frozen; only the new classifier head trains.

Weight decay: VPT's rule (KMnP/vpt src/solver/optimizer.py, SGD: every trained tensor but the head's
bias), whose linear-probe numbers these are; on a head alone it is the same split as timm's.
"""
from petlbench.method import ANY_FAMILY, Method


class LinearProbe(Method):
    name = "linear"
    description = "train only the classifier head on frozen features"
    paper = "baseline; numbers and recipe from VPT (Jia et al., ECCV 2022)"
    families = ANY_FAMILY
    recipe = "vpt"  # SGD with momentum, as VPT's linear-probe numbers
    decay_rule = "vpt"  # see the module docstring

    def apply(self, model):
        return model  # the runner already trains the head

    def merge(self, model):
        return model  # the frozen backbone and the new head
