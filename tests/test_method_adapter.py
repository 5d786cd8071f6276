"""Adapter variants: NOAH's default and PETL_Vision's rows in closed form; each placement changes the residual
stream only where it sits; each drop-path order drops what it should; zero init is the identity; the frozen set is
bit-identical after a step for every placement and order."""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.engine.train import make_optimizer
from petlbench.methods.adapter import AdaptedDropPath, AdapterConfig, Bottleneck, ParallelMLP
from petlbench.params import build_model, count_params
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from tests.families import TINY, tiny

NUM_CLASSES = 5
VIT_B = BackboneSpec("vit_base_patch16_224", pretrained=False)
REFERENCE = Path(__file__).parent / "data" / "paper_settings" / "petl_vision_best_tune.csv"
PLACEMENTS = ["mlp", "attn", "both", "parallel"]
ORDERS = ["before", "after", "twice"]


def build(spec, method: str):
    return build_model(spec, parse_method_spec(method), NUM_CLASSES, seed=0)


def with_drop_path(family: str, rate: float = 0.2) -> BackboneSpec:
    name, args = TINY[family]
    return BackboneSpec(name, {**args, "drop_path_rate": rate}, pretrained=False)


def moved(model):
    """A 'trained' adapter: every adapter tensor away from its init (zero init included)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bottleneck):
                for p in m.parameters():
                    p.add_(0.05 * torch.randn_like(p))
    return model


def test_noah_default_is_0_16m_on_vit_b16():
    counts = count_params(VIT_B, parse_method_spec("adapter"), 100)
    assert counts.added == counts.trainable_excl_head == 12 * (768 * 8 + 8 + 8 * 768 + 768) == 156_768


def test_petl_vision_rows_match_its_inserted_parameters():
    """Every default_vtab adapter row: 12 (lora_p_adapter) or 24 (rand_h_adapter) adapters of 2 d r + r + d."""
    with REFERENCE.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))
                if r["experiment"] == "default_vtab" and r["source_method"] in ("lora_p_adapter", "rand_h_adapter")]
    assert len(rows) == 2 * 20
    seen = {}
    for r in rows:
        r_dim, per_block = int(r["adapter_bottleneck"]), 2 if r["source_method"] == "rand_h_adapter" else 1
        closed = 12 * per_block * (2 * 768 * r_dim + r_dim + 768)
        assert closed == int(r["inserted_parameters"]), r
        seen[(r["method"], r_dim)] = closed
    for (label, r_dim), closed in seen.items():  # each distinct size once, built as the settings file builds it
        counts = count_params(VIT_B, parse_method_spec(f"{label}:bottleneck={r_dim}:act=relu:drop_path_order=twice"), 2)
        assert counts.trainable_excl_head == closed


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_placement_changes_the_stream_only_where_it_sits(placement):
    """Block 0 (eval, no drop-path): what enters the MLP's norm, what the MLP returns, and the block's output,
    against the plain model with the same weights."""
    x = torch.randn(2, 3, 32, 32)
    seen = {}

    def record(model, tag):
        body = anatomy(model)
        block = body.blocks[0]
        inner_mlp = block.mlp.mlp if isinstance(block.mlp, ParallelMLP) else block.mlp
        hooks = [block.norms[1].register_forward_hook(lambda m, i, o: seen.__setitem__((tag, "after attn"), i[0])),
                 inner_mlp.register_forward_hook(lambda m, i, o: seen.__setitem__((tag, "mlp out"), o)),
                 block.module.register_forward_hook(lambda m, i, o: seen.__setitem__((tag, "block out"), o))]
        model.eval()(x)
        for h in hooks:
            h.remove()

    plain, _, _ = build(tiny("vit"), "linear")
    adapted, _, _ = build(tiny("vit"), f"adapter:placement={placement}")
    record(plain, "plain"), record(moved(adapted), "adapted")
    same = {k: torch.equal(seen[("plain", k)], seen[("adapted", k)]) for k in ("after attn", "mlp out", "block out")}
    assert same == {"mlp": {"after attn": True, "mlp out": True, "block out": False},
                    "parallel": {"after attn": True, "mlp out": True, "block out": False},
                    "attn": {"after attn": False, "mlp out": False, "block out": False},
                    "both": {"after attn": False, "mlp out": False, "block out": False}}[placement]


class DropAll(nn.Module):
    """timm's DropPath with every sample dropped (rate 1), to read what each order puts under it."""

    def forward(self, y):
        return torch.zeros_like(y)


@pytest.mark.parametrize("order", ORDERS)
def test_drop_path_order(order):
    """before: the adapter is not dropped (NOAH; AdaptFormer beside the MLP); after, twice: it is."""
    torch.manual_seed(0)
    adapter = Bottleneck(6, dataclasses.replace(AdapterConfig(), bottleneck=3, dropout=0.0)).eval()
    x, y = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    sequential = AdaptedDropPath(DropAll(), adapter, order)(y)
    parallel = ParallelMLP(nn.Identity(), nn.Identity(), nn.Identity(), DropAll(), adapter, order)(x)
    if order == "before":  # A(0) = bottleneck(0); beside: the adapter's change of x
        torch.testing.assert_close(sequential, adapter(torch.zeros_like(y)))
        torch.testing.assert_close(parallel, adapter(x))
        assert sequential.abs().sum() > 0
    else:
        assert not sequential.any() and not parallel.any()
    keep = AdaptedDropPath(nn.Identity(), adapter, order)(y)  # nothing dropped: every order is y + bottleneck(y)
    torch.testing.assert_close(keep, y + adapter(y), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_zero_init_is_the_identity_at_start(family):
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(with_drop_path(family), "linear")
    expected = plain.eval()(x)
    for placement in PLACEMENTS:
        for order in ORDERS:
            spec = f"adapter:init=zeros:placement={placement}:drop_path_order={order}"
            adapted, _, _ = build(with_drop_path(family), spec)
            torch.testing.assert_close(adapted.eval()(x), expected, rtol=0, atol=0, msg=spec)


def test_inits():
    d, r = 48, 4
    bound = math.sqrt(6 / (d + r))  # Xavier uniform
    for init in ("xavier", "houlsby", "zeros"):
        torch.manual_seed(0)
        m = Bottleneck(d, dataclasses.replace(AdapterConfig(), bottleneck=r, init=init))
        if init == "xavier":  # NOAH's AdapterSuper.init_weights, PETL_Vision's 'xavier'
            assert all(0 < p.abs().max() <= bound for p in (m.down.weight, m.up.weight))
            assert all(0 < b.abs().max() < 1e-5 for b in (m.down.bias, m.up.bias))
        elif init == "houlsby":  # truncated normal, std 0.01, within 2 std; biases zero
            assert all(0 < p.abs().max() <= 0.02 for p in (m.down.weight, m.up.weight))
            assert not m.down.bias.any() and not m.up.bias.any()
        else:  # PETL_Vision's lora_xavier
            assert 0 < m.down.weight.abs().max() <= bound
            assert not m.up.weight.any() and not m.up.bias.any() and not m.down.bias.any()


def test_activations_are_the_sources():
    z = torch.linspace(-3, 3, 13)
    for act, expected in (("quickgelu", z * torch.sigmoid(1.702 * z)), ("relu", z.clamp(min=0)),
                          ("gelu", nn.functional.gelu(z))):
        m = Bottleneck(4, dataclasses.replace(AdapterConfig(), bottleneck=2, act=act))
        torch.testing.assert_close(m.act(z), expected)


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("order", ORDERS)
def test_frozen_set_bit_identical_after_a_step(family, placement, order):
    torch.manual_seed(0)
    model, counts, task_keys = build(with_drop_path(family, 0.1), f"adapter:placement={placement}:"
                                                                  f"drop_path_order={order}")
    adapters = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(adapters) == anatomy(model).depth * (2 if placement == "both" else 1)
    assert counts.added == sum(2 * a.down.in_features * 8 + 8 + a.down.in_features for a in adapters)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable
    make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0)).step()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value) == (key not in trainable), key
    assert trainable <= set(task_keys)
