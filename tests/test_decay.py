"""Weight-decay rules (issue 17, fault 3): each method decays what its source code decays, the rule is recorded
and part of the run's identity, and timm's rule (every run before) gives exactly timm's own groups."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from timm.optim import create_optimizer_v2

from petlbench.errors import UserError
from petlbench.params import build_model
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import BUILTIN, get_method, parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.suite import load_suite
from petlbench.engine.headgrid import batchable
from petlbench.engine.train import make_optimizer
from tests.conftest import petlbench_cli
from tests.families import tiny


def plan(method: str, overrides=None, recipe=None):
    suite = load_suite("vtab1k")
    spec = resolve_backbone(suite, Path("/nonexistent"), None, None, None, True)
    return plan_one(suite, suite.tasks[0], parse_method_spec(method), spec, 0, overrides or {}, recipe,
                    suite.protocol("final"), Path("/nonexistent"))


def decayed(model, cfg: TrainConfig) -> dict[int, float]:
    """id of every trained parameter -> the weight decay its optimizer group applies."""
    return {id(p): group["weight_decay"] for group in make_optimizer(model, cfg).param_groups for p in group["params"]}


def test_ln_decays_its_norms_as_petl_vision_does():
    """PETL_Vision hands every tuned tensor to one AdamW group: a step with zero gradients shrinks the norms'
    weights and biases by lr x wd, and the head's bias too."""
    cfg = plan("ln").train
    model, _, _ = build_model(tiny("vit"), parse_method_spec("ln"), 5, seed=0)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    optimizer = make_optimizer(model, cfg)
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # warm-up aside: AdamW with zero gradients is p <- p * (1 - lr * wd)
    for p, q in zip(trained, before):
        torch.testing.assert_close(p.detach(), q * (1 - cfg.lr * cfg.weight_decay), rtol=0, atol=1e-7)
    norm = model.blocks[0].norm1
    assert set(decayed(model, cfg)[id(t)] for t in (norm.weight, norm.bias, model.head.bias)) == {1e-3}
    assert cfg.decay_rule == "all" and cfg.weight_decay == 1e-3


@pytest.mark.parametrize("method", ["full", "bitfit", "ssf", "vpt_deep:tokens=2", "lora", "adapter", "linear"])
@pytest.mark.parametrize("family", ["vit", "swin"])
def test_timms_rule_is_timms_own_grouping(method, family):
    """Every run before the rule was a setting trained with timm's factory: the structural rule reproduces it."""
    if not parse_method_spec(method.split(":")[0]).supports(family):
        pytest.skip("the method does not support the family")
    model, _, _ = build_model(tiny(family), parse_method_spec(method), 5, seed=0)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.05, decay_rule="timm")
    timms = {id(p): g["weight_decay"] for g in create_optimizer_v2(model, opt="adamw", weight_decay=0.05).param_groups
             for p in g["params"]}
    assert decayed(model, cfg) == timms


def test_vpts_rule_follows_its_optimizer_branch():
    """KMnP/vpt make_optimizer: SGD decays every trained tensor but the head's bias; AdamW exempts every bias."""
    model, _, _ = build_model(tiny("vit"), parse_method_spec("vpt_deep:tokens=2"), 5, seed=0)
    sgd = decayed(model, plan("vpt_deep").train)
    prompts = [p for p in model.parameters() if p.requires_grad and p is not model.head.weight and p is not model.head.bias]
    assert prompts and all(sgd[id(p)] == 1e-3 for p in [*prompts, model.head.weight]) and sgd[id(model.head.bias)] == 0
    full, _, _ = build_model(tiny("vit"), parse_method_spec("full"), 5, seed=0)
    cfg = plan("full").train
    assert (cfg.optimizer, cfg.decay_rule) == ("adamw", "vpt")
    adamw = decayed(full, cfg)
    wd = cfg.weight_decay
    norm = full.blocks[0].norm1
    assert adamw[id(norm.weight)] == adamw[id(full.pos_embed)] == adamw[id(full.cls_token)] == wd, \
        "VPT's AdamW decays norm weights and embeddings (timm's rule exempts them)"
    assert adamw[id(norm.bias)] == adamw[id(full.head.bias)] == adamw[id(full.blocks[0].attn.qkv.bias)] == 0


def test_a_head_trained_alone_or_a_tail_finds_its_classifier():
    head = torch.nn.Linear(8, 3)
    rates = decayed(head, TrainConfig(optimizer="sgd", weight_decay=0.1, decay_rule="vpt"))
    assert (rates[id(head.weight)], rates[id(head.bias)]) == (0.1, 0.0)
    assert set(decayed(head, TrainConfig(weight_decay=0.1, decay_rule="all")).values()) == {0.1}
    from petlbench.engine.prefix import Tail
    model, _, _ = build_model(tiny("vit"), parse_method_spec("partial:blocks=1"), 5, seed=0)
    tail = Tail(model, len(model.blocks) - 1)  # what trains on cached activations: the last block, norm, head
    rates = decayed(tail, TrainConfig(optimizer="sgd", weight_decay=0.1, decay_rule="vpt"))
    assert rates[id(model.head.bias)] == 0.0 and rates[id(model.head.weight)] == rates[id(model.norm.bias)] == 0.1


def test_the_rule_is_recorded_and_makes_the_identity():
    ln, adapter = plan("ln"), plan("adapter")
    assert ln.config()["train"]["decay_rule"] == "all"
    assert "decay_rule" not in adapter.config()["train"], "timm's rule keeps the identity runs had before it"
    assert adapter.train.decay_rule == "timm"
    timm_ln = plan("ln", overrides={"decay_rule": "timm"})
    assert timm_ln.train.decay_rule == "timm" and timm_ln.config_id() != ln.config_id()
    assert plan("ln", recipe="vpt").train.decay_rule == "vpt", "under another recipe, that recipe's rule"
    with pytest.raises(UserError, match="decay_rule"):
        plan("ln", overrides={"decay_rule": "some"})


def test_every_builtin_method_declares_its_rule():
    assert {name: get_method(name).decay_rule for name in BUILTIN} == {
        "full": "vpt", "linear": "vpt", "bitfit": "vpt", "ln": "all", "partial": "vpt", "adapter": "timm",
        "adapter_plus": "timm", "adaptformer": "timm", "convpass": "all", "lora": "timm", "peft": "timm",
        "kadaptation": "timm", "ssf": "timm", "fact": "all", "vpt_shallow": "vpt", "vpt_deep": "vpt", "vqt": "vpt",
        "conv_adapter": "timm", "vpt_pad": "vpt", "difffit": "all", "repadapter": "all",
        "dtl": "timm",
        "selective": "all",
        "e2vpt": "vpt",
        "zeroshot": None, "coop": "all", "cocoop": "all",  # zeroshot trains nothing
        "tip_adapter": "all", "tip_adapter_f": "all", "clip_adapter": "all",
        "cavpt": "all", "mvlpt": "all",
        "gps": "timm", "spt": "timm",
        "loramul_vptadd": "all", "pace": "all",
        "noah": "timm",
        "como": "all", "como_free": "all",
        "snell": "timm"}


def test_the_head_grid_trains_together_only_where_the_bias_is_not_decayed():
    points = [TrainConfig(optimizer="sgd", lr=lr, decay_rule="vpt") for lr in (0.1, 0.01)]
    assert batchable(points)
    assert not batchable([TrainConfig(optimizer="sgd", lr=lr, decay_rule="all") for lr in (0.1, 0.01)])


def test_ls_methods_shows_each_rule():
    ls = petlbench_cli("ls", "methods")
    assert ls.returncode == 0, ls.stderr
    blocks = {}
    for line in ls.stdout.splitlines():
        if line and not line.startswith(" "):
            name = line.split()[0]
        blocks[name] = blocks.get(name, "") + line + "\n"
    assert "weight decay: all rule" in blocks["ln"] and "weight decay: vpt rule" in blocks["vpt_deep"]
    assert "weight decay: timm rule" in blocks["ssf"]
