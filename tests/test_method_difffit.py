"""DiffFit: the trainable set exactly (biases, norms, gammas, head), the ViT-B/16 count against PETL_Vision's,
gamma's placement and init, and the exact fold of gamma into proj / fc2 (merged logits equal, plain timm model)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.methods.difffit import BranchScale
from petlbench.params import build_model, count_params
from petlbench.plan import departures
from petlbench.recipes import RECIPES
from petlbench.registry import parse_method_spec
from petlbench.weights import same_architecture
from tests.families import tiny


def build(spec, method="difffit", num_classes=5):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def test_vit_b16_count_is_petl_visions():
    counts = count_params(BackboneSpec("vit_base_patch16_224", pretrained=False), parse_method_spec("difffit"), 100)
    d, depth = 768, 12
    biases = d + depth * (3 * d + d + 4 * d + d + 2 * d) + d  # patch embed; qkv, proj, fc1, fc2, 2 norms; norm
    norm_weights = (2 * depth + 1) * d
    gammas = 2 * depth * d
    assert counts.trainable_excl_head == biases + norm_weights + gammas == 140_544  # inserted_parameters
    assert counts.added == gammas and counts.head == 100 * d + 100


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_trainable_set_is_biases_norms_gammas_and_head(family):
    model, _, _ = build(tiny(family))
    head = {n for n, _ in model.get_classifier().named_parameters()}
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    expected = {n for n, p in model.named_parameters()
                if n.endswith((".bias", ".gamma")) or id(p) in norms or n.startswith("head.")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert head and trainable == expected
    assert sum(n.endswith(".gamma") for n in trainable) == 2 * 2  # tiny models: 2 blocks, 2 branches each


def test_gamma_sits_on_proj_and_fc2_at_one():
    model, _, _ = build(tiny("vit"))
    paths = {n for n, m in model.named_modules() if isinstance(m, BranchScale)}
    assert paths == {f"blocks.{i}.{p}" for i in range(2) for p in ("attn.proj", "mlp.fc2")}
    assert all(torch.equal(m.gamma, torch.ones_like(m.gamma)) for m in model.modules() if isinstance(m, BranchScale))
    plain, _, _ = build(tiny("vit"), "bitfit")  # same seed, same weights: gamma 1 changes nothing
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_merge_folds_into_a_plain_timm_model(family):
    spec = tiny(family)
    model, _, _ = build(spec)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)  # trained gammas, biases and norms
    x = torch.randn(3, 3, 32, 32)
    before = model.eval()(x)
    merged = parse_method_spec("difffit").merge(model)
    plain = timm.create_model(spec.name, pretrained=False, num_classes=5, **spec.args)
    assert same_architecture(merged, plain) is None
    assert not any(isinstance(m, BranchScale) for m in merged.modules())
    plain.load_state_dict(merged.state_dict())  # strict: the backbone's own keys
    assert (plain.eval()(x) - before).abs().max() < 1e-5


def test_defaults_are_petl_visions_most_chosen():
    difffit, noah = parse_method_spec("difffit"), RECIPES["noah"]
    train = {**noah.train, **departures(difffit, noah)}
    assert (train["optimizer"], train["lr"], train["weight_decay"], train["batch_size"], train["epochs"]) == \
        ("adamw", 0.001, 0.001, 64, 100)
    assert train["decay_rule"] == "all"  # PETL_Vision's AdamW decays every trained tensor


def test_petl_visions_difffit_rows_plan_without_data(tmp_path):
    """PETL_Vision's 19 DiffFit rows, refused while petlbench had no difffit, plan with their per-task lr and wd."""
    from petlbench.settings import load_settings
    from petlbench.sweep.runner import make_sweep
    sweep = make_sweep("vtab1k", "difffit", [0], data_root=str(tmp_path), out=str(tmp_path / "out"),
                       protocol="paper", source="petl_vision", random_init=True, log=lambda line: None)
    settings = load_settings("petl_vision")
    plans = [sweep.plan(task, method, 0) for task in sweep.tasks for method in sweep.methods]
    assert len(plans) == 19
    for p in plans:
        row = settings.row("vtab1k", p.task.name, "difffit")
        assert (p.train.lr, p.train.weight_decay, p.train.decay_rule) == \
            (row.train["lr"], row.train["weight_decay"], "all")
