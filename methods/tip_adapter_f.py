"""Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned (the values and CLIP stay frozen).

Zhang et al., ECCV 2022; gaopengcuhk/Tip-Adapter main.py `run_tip_adapter_F`: the keys become a trainable linear map
initialised from the cache (N x E parameters), trained with cross-entropy on the Tip-Adapter logits at the initial
alpha and beta (AdamW, lr 0.001, eps 1e-4, torch's default weight decay 0.01, cosine over every step without
warm-up, 20 epochs, batch 256), then alpha and beta are searched on the validation split as for `tip_adapter`.

Departures: the official code keeps the epoch of best *test* accuracy and reports the better of it and the searched
one; here the last epoch, and the search on val only (the house's rule: nothing is chosen on test). AdamW's eps is
timm's 1e-8 (the runner has no eps setting); the training images get the suite's augmentation, not the official
random resized crop 0.5-1 and flip; the cache keys as in `tip_adapter` (one un-augmented pass, not 10 augmented).
"""
from petlbench.methods.tip_adapter import CONFIGS, TipAdapter

RECIPE = ("main.py run_tip_adapter_F: AdamW lr 0.001 (eps 1e-4; weight decay torch's default 0.01), "
          "CosineAnnealingLR over every step, configs/*.yaml train_epoch 20, batch 256; " + CONFIGS)


class TipAdapterF(TipAdapter):
    name = "tip_adapter_f"
    description = "Tip-Adapter with the cache keys fine-tuned; alpha, beta chosen on val"
    trains = True
    learn_keys = True
    train_defaults = {"optimizer": "adamw", "lr": 0.001, "weight_decay": 0.01, "epochs": 20, "warmup_epochs": 0,
                      "batch_size": 256}
    defaults_source = RECIPE
