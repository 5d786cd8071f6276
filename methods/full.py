"""Full fine-tuning: every backbone parameter trains (the upper reference for parameter count)."""
from petlbench.method import Method, unfreeze


class FullFineTuning(Method):
    name = "full"
    description = "fine-tune every parameter of the backbone"
    recipe = "vpt"  # the VTAB-1k and FGVC full fine-tuning numbers come from VPT (AdamW, 5 warm-up epochs)

    def apply(self, model):
        unfreeze(model)
        return model
