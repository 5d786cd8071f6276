"""Linear probe: the backbone stays frozen; only the new classifier head trains."""
from petlbench.method import Method


class LinearProbe(Method):
    name = "linear"
    description = "train only the classifier head on frozen features"
    # VPT (Jia et al. 2022): SGD with momentum 0.9 for linear probing.
    train_defaults = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0}

    def apply(self, model):
        return model  # the runner already trains the head
