"""Full fine-tuning: every backbone parameter trains (the upper reference for parameter count)."""
from petlbench.method import Method, unfreeze


class FullFineTuning(Method):
    name = "full"
    description = "fine-tune every parameter of the backbone"
    # VPT (Jia et al. 2022): AdamW for full fine-tuning, 5 warm-up epochs.
    train_defaults = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "warmup_epochs": 5}

    def apply(self, model):
        unfreeze(model)
        return model
