"""Adapter+: Houlsby's init (near, not at, the identity; the frozen model exactly with the channel scale at
zero), the Post-Adapter placement after each block, its own per-sample drop-path, its size on ViT-B/16."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.methods.adapter_plus import PostAdapter
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method, num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def adapters(model):
    found = [m for m in model.modules() if isinstance(m, PostAdapter)]
    assert found, "the method added adapters"
    return found


def wrapped(model, plain):
    """(frozen block, adapter) where each block of the plain model sits in the adapted one (same names)."""
    names = {id(m): n for n, m in plain.named_modules()}
    pairs = []
    for block in anatomy(plain).blocks:
        seq = model.get_submodule(names[id(block.module)])
        assert isinstance(seq, nn.Sequential) and len(seq) == 2
        pairs.append((seq[0], seq[1]))
    return pairs


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_houlsby_init_is_near_the_identity_and_exact_with_zero_scale(family):
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny(family), "linear")
    adapted, _, _ = build(tiny(family), "adapter_plus")
    plain.eval(), adapted.eval()
    assert not torch.equal(adapted(x), plain(x))
    torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=1e-2)
    for a in adapters(adapted):
        assert torch.equal(a.scale, torch.ones_like(a.scale)) and a.scale.shape == (a.up.out_features,)
        for layer in (a.down, a.up):
            assert layer.weight.abs().max() <= 0.02 and 0.005 < layer.weight.std() < 0.015
            assert not layer.bias.any()
        assert not any(isinstance(m, nn.LayerNorm) for m in a.modules()), "Adapter+ has no norm inside"
    with torch.no_grad():
        for a in adapters(adapted):
            a.scale.zero_()
    torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_post_adapter_reads_and_adds_to_each_blocks_output(family):
    """out = y + up(gelu(down(y))) * scale, y = the frozen block's output (after the MLP's residual add)."""
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family), "adapter_plus")
    plain.eval(), model.eval()  # timm's Swin has drop-path 0.1 by default
    with torch.no_grad():
        for a in adapters(model):
            a.scale.normal_()
    for old, (frozen, adapter) in zip(anatomy(plain).blocks, wrapped(model, plain)):
        assert isinstance(adapter, PostAdapter)
        shape = (2, 4, 4, old.dim) if family == "swin" else (2, 17, old.dim)
        x = torch.randn(shape)
        y = old.module(x)
        expected = y + adapter.up(nn.functional.gelu(adapter.down(y))) * adapter.scale
        torch.testing.assert_close(nn.Sequential(frozen, adapter)(x), expected)


def test_drop_path_drops_the_adapter_per_sample_in_training():
    """Stochastic depth on the adapter branch: each sample gets y, or y + branch / keep."""
    torch.manual_seed(0)
    adapter = PostAdapter(16, 4, drop_path=0.5)
    with torch.no_grad():
        adapter.scale.normal_()
    y = torch.randn(64, 5, 16)
    branch = adapter.up(nn.functional.gelu(adapter.down(y))) * adapter.scale
    adapter.train()
    out = adapter(y)
    dropped = [torch.allclose(out[i], y[i]) for i in range(len(y))]
    kept = [torch.allclose(out[i], y[i] + branch[i] / 0.5, atol=1e-6) for i in range(len(y))]
    assert all(d or k for d, k in zip(dropped, kept)) and 10 < sum(dropped) < 54
    adapter.eval()
    torch.testing.assert_close(adapter(y), y + branch)


def test_vit_b16_count():
    """12 x (768*8+8 + 8*768+768 + 768) = 165,984 at bottleneck 8 (0.17M)."""
    spec = BackboneSpec("vit_base_patch16_224", pretrained=False)
    for r in (8, 1):
        _, counts, _ = build(spec, f"adapter_plus:bottleneck={r}", 100)
        assert counts.trainable_excl_head == counts.added == 12 * (768 * r + r + r * 768 + 768 + 768)
    _, counts, _ = build(spec, "adapter_plus", 100)
    assert counts.trainable_excl_head == 165_984


def test_tune_grid_is_the_papers_bottlenecks_and_bad_options_refused():
    cls = type(parse_method_spec("adapter_plus"))
    assert cls.tune_grid == {"bottleneck": [1, 2, 4, 8, 16, 32]}
    for bad in ("bottleneck=0", "drop_path=1", "drop_path=-0.1"):
        with pytest.raises(UserError):
            parse_method_spec(f"adapter_plus:{bad}")
