"""The method contract, for every registered method on a tiny model of every family it supports:
output shape; one training step moves exactly the trainable set and leaves every other parameter and
buffer bit-identical (BatchNorm statistics included); gradients reach exactly the trainable set."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbones import ALL_FAMILIES, family_of
from petlbench.params import build_model, head_parameters
from petlbench.registry import available_methods, parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import make_optimizer
from tests.families import CLIP_FAMILIES, tiny

NUM_CLASSES = 5
# options that fit every tiny model: KAdaptation's default factor 32 divides none of their widths (ViT 48, Swin 24),
# selective's default last three blocks are more than they have
FITTING = {"kadaptation": "kadaptation:factor=6", "selective": "selective:blocks=-1",
           "coop": "coop:n_ctx=8", "cavpt": "cavpt:n_ctx=8",
           "spt": "spt:budget=0.003"}  # tiny models: 2 blocks; coop: 16 + a name overflow the tiny text context
TINY_DINO = "dino=vit_small_patch16_224.dino:dino_pretrained=false:dino_args=img_size=32+patch_size=8+embed_dim=24+depth=1"
FITTING.update(como=f"como:{TINY_DINO}", como_free=f"como_free:{TINY_DINO}")  # a tiny random DINO, nothing fetched
# VPT's padded border grows the image; CLIP-RN's attention pool takes one size (tests/test_clip_resnet.py)
REFUSED = {("vpt_pad", "clip_rn")}
# every method on every family it supports, and on a tiny CLIP's image tower (a timm ViT; a timm ResNet for CLIP-RN)
# when it supports that family; the methods that need CLIP's text side on the CLIP towers only
PAIRS = [(name, family) for name in sorted(available_methods()) for family in (*ALL_FAMILIES, *CLIP_FAMILIES)
         if available_methods()[name].load().supports(CLIP_FAMILIES.get(family, family))
         and (family in CLIP_FAMILIES or not available_methods()[name].load().needs_text)
         and (name, family) not in REFUSED]


def build(family, method):
    """As the runner builds it: a closed-form method (Tip-Adapter) fills its cache from head inputs, here random; a
    selecting method (GPS) selects from training batches, here random images."""
    def fit(model):
        labels = torch.arange(2 * NUM_CLASSES) % NUM_CLASSES
        width = getattr(model.get_classifier(), "in_features", model.num_features)  # CoMo's: CLIP's + DINO's
        method.fit_closed_form(model, torch.randn(len(labels), width), labels)

    def select(model):
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(2 * NUM_CLASSES) % NUM_CLASSES
        method.select(model, [(torch.randn(len(labels), 3, 32, 32, generator=generator), labels)])
    hook = fit if method.closed_form else select if method.selects else None
    return build_model(tiny(family), method, NUM_CLASSES, seed=0, closed_form=hook)


@pytest.mark.parametrize("name,family", PAIRS)
def test_one_step_moves_exactly_what_trains(name, family):
    torch.manual_seed(0)
    method = parse_method_spec(FITTING.get(name, name))
    model, counts, task_keys = build(family, method)
    assert family_of(model) == CLIP_FAMILIES.get(family, family) or name in ("vpt_deep", "vpt_shallow"), \
        "methods keep the timm model"
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
    with torch.no_grad():  # off the zero inits (LoRA's B, FacT's V) that hold back the gradients of the rest
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
        for module in model.modules():  # off timm's zero biases, which loramul_vptadd scales (b * delta_b)
            if method.name in ("loramul_vptadd", "pace") and isinstance(module, nn.Linear) \
                    and module.bias is not None and not module.bias.requires_grad:
                module.bias.add_(0.01 * torch.randn_like(module.bias))
        if method.name == "cocoop":  # the tiny CLIP's meta-net has 2 hidden ReLU units: keep them alive for x
            model.get_classifier().meta_net[0].bias.add_(1.0)
    model.train()
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES)

    state_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) == counts.trainable
    if not method.trains:  # evaluated as built (zero-shot): nothing trains, nothing has a gradient
        assert counts.trainable == 0 and not trainable
        return
    head = {n for n, p in model.named_parameters() if any(p is q for q in head_parameters(model.get_classifier()))}
    assert head <= trainable, "the head always trains"
    assert trainable <= set(task_keys), "what trains is part of the saved task"

    method.training_loss(model, x, y, nn.functional.cross_entropy).backward()  # the loss fit() trains with
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable, "gradients reach exactly the trainable set"
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable), "every trainable tensor gets a gradient"

    make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0)).step()
    model(x)  # a second forward in train mode: BatchNorm would update its running statistics here
    after = model.state_dict()
    for key, value in state_before.items():
        if key in trainable and key not in inert_keys(model):
            assert not torch.equal(after[key], value), f"trainable {key} did not move"
        elif key not in task_keys:
            assert torch.equal(after[key], value), f"frozen {key} changed"


def inert_keys(model) -> set[str]:
    """Trainable tensors a step may leave bit-identical: the key bias of CLIP-RN's attention pool adds the same to
    every attention logit of a query, which softmax ignores; its gradient is rounding noise."""
    pool = getattr(model, "global_pool", None)
    bias = getattr(getattr(pool, "k_proj", None), "bias", None)
    return {n for n, p in model.named_parameters() if p is bias}


@pytest.mark.parametrize("name,family", PAIRS)
def test_saved_task_rebuilds_the_same_model(name, family, tmp_path):
    """Save the task's tensors, build the method afresh (same seed), load them: the same logits."""
    from petlbench.weights import load_task, save_task
    method = parse_method_spec(FITTING.get(name, name))
    model, _, task_keys = build(family, method)
    with torch.no_grad():  # a "trained" task: every task tensor moved
        for key, value in model.state_dict().items():
            if key in task_keys and value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value))
    info = save_task(model, task_keys, tmp_path / "task.safetensors")
    assert info["tensors"] == len(task_keys) and info["bytes"] > 0
    # built afresh as `petlbench eval` does, without data: a closed-form cache takes its size from the saved task
    fresh, _, fresh_keys = build_model(tiny(family), parse_method_spec(FITTING.get(name, name)), NUM_CLASSES, seed=0)
    assert fresh_keys == task_keys
    load_task(fresh, tmp_path / "task.safetensors", fresh_keys)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
