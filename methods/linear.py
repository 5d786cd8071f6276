"""Linear probe: the backbone stays frozen; only the new classifier head trains."""
from petlbench.method import Method


class LinearProbe(Method):
    name = "linear"
    description = "train only the classifier head on frozen features"
    recipe = "vpt"  # SGD with momentum, as VPT's linear-probe numbers

    def apply(self, model):
        return model  # the runner already trains the head
