"""Which trained tensors weight decay reaches (`TrainConfig.decay_rule`): each method's source code has its own
rule, and the rule changes results (LN-Tune under timm's rule never decayed a single norm tensor).

Groups are built from structure only: a tensor's number of dimensions, whether a module holds it as its own
`bias`, whether it belongs to the classifier (`get_classifier()`; a head trained alone on cached features is
the classifier itself), and what the model declares in timm's `no_weight_decay()`.

- "timm": timm's optimizer factory (create_optimizer_v2 with filter_bias_and_bn; NOAH, SSF, Adapter+ and
  Conv-Adapter train through it): no decay on tensors of at most one dimension, on any module's bias, and on what
  the model declares (ViT: pos_embed, cls_token; Swin: relative position tables). Every record before the rule
  was recorded trained with it.
- "all": PETL_Vision (engine/optimizer.py) and JieShibo/PETL-ViT (FacT, Convpass): every trained tensor, the
  head's bias included, in one group with the weight decay.
- "vpt": KMnP/vpt src/solver/optimizer.py make_optimizer. SGD and Adam: every trained tensor but the classifier's
  bias ('last_layer.bias'). AdamW: every tensor but the biases (its name filter 'LayerNorm.*' matches no
  parameter of VPT's ViT, whose norms are 'attention_norm', 'ffn_norm', 'encoder_norm', so norm weights and the
  embeddings decay). Departure: VPT's AdamW branch decays at a fixed 0.01 whatever SOLVER.WEIGHT_DECAY is (when
  it is > 0); here at the configured weight decay, so the tune grid's wd axis means what it says.
"""
from __future__ import annotations

from torch import nn

DECAY_RULES = ("timm", "all", "vpt")


def biases(module: nn.Module) -> set[int]:
    """ids of the parameters some module holds as its own `bias`."""
    found = set()
    for m in module.modules():
        bias = dict(m.named_parameters(recurse=False)).get("bias")
        if bias is not None:
            found.add(id(bias))
    return found


def declared(model: nn.Module) -> set[int]:
    """ids of the parameters the model itself exempts (timm's `no_weight_decay()`: exact parameter paths)."""
    found = set()
    for path in getattr(model, "no_weight_decay", lambda: set())():
        try:
            found.add(id(model.get_parameter(path)))
        except AttributeError:  # a declared name the model does not have (ViT's dist_token, reg_token)
            pass
    return found


def classifier(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_classifier", None)
    return get() if callable(get) else model  # a head trained alone on cached features is the classifier


def exempt(model: nn.Module, rule: str, optimizer: str) -> set[int]:
    """ids of the trained parameters that weight decay does not reach under `rule` with `optimizer`."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if rule == "all":
        return set()
    if rule == "timm":
        return {id(p) for p in trained if p.ndim <= 1} | biases(model) | declared(model)
    if rule == "vpt":
        return biases(model) if optimizer == "adamw" else biases(classifier(model))
    raise ValueError(f"decay rule {rule!r}: expected one of {', '.join(DECAY_RULES)}")


def param_groups(model: nn.Module, rule: str, optimizer: str, weight_decay: float) -> list[dict]:
    """The trained parameters in two groups, without and with weight decay (empty groups left out)."""
    skip = exempt(model, rule, optimizer)
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if id(p) in skip], "weight_decay": 0.0},
              {"params": [p for p in trained if id(p) not in skip], "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]
