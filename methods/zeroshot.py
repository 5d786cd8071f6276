"""Zero-shot CLIP: the class names' prompt-ensemble text embeddings classify the image embedding; nothing trains.

Radford et al., ICML 2021 ("Learning Transferable Visual Models From Natural Language Supervision"). The head is
open_clip's `build_zero_shot_classifier` (each template's text embedding unit-normalised, averaged over templates,
normalised again; tests/test_clip.py checks the logits against it). Templates: the task's (`templates:` in the
suite), else CLIP's "a photo of a {}.". A run has 0 trainable parameters and 0 epochs.
"""
from torch import nn

from petlbench.method import Method
from petlbench.textheads import ZeroShotHead


class FixedZeroShotHead(ZeroShotHead):
    """The zero-shot head with its class embeddings frozen too."""

    def frozen_parts(self) -> tuple[nn.Module, ...]:
        return (self.proj, self.classes)


class ZeroShot(Method):
    name = "zeroshot"
    description = "CLIP's zero-shot classifier from class names and prompt templates; no training"
    paper = "Radford et al., ICML 2021 (CLIP)"
    families = ("vit", "resnet")  # CLIP's ViT or ResNet image tower (petlbench.clip, petlbench.clip_resnet)
    needs_text = True
    trains = False

    def apply(self, model):
        model.head = FixedZeroShotHead.from_text(model.clip)  # the task's class names and templates
        return model
