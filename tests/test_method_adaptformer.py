"""AdaptFormer: the model starts unchanged, the adapter is parallel to the MLP and reads the stream (released
code) or the MLP's normalised input (paper Eq. 3), its size on ViT-B/16 against the VTAB-1k tables' 0.16M."""
from __future__ import annotations

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.methods.adaptformer import AdaptMLP
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method, num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def moved(model):
    """A 'trained' AdaptFormer: every adapter tensor away from its init."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptMLP):
                for p in m.adapter.parameters():
                    p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("source", ["stream", "norm"])
def test_starts_as_the_frozen_model(family, source):
    """LoRA's init (up-projection and biases zero): exactly the linear probe's logits with the same seed."""
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny(family), "linear")
    adapted, _, _ = build(tiny(family), f"adaptformer:input={source}")
    torch.testing.assert_close(adapted.eval()(x), plain.eval()(x), rtol=0, atol=0)
    adapters = [m.adapter for m in adapted.modules() if isinstance(m, AdaptMLP)]
    assert len(adapters) == len(anatomy(plain).blocks)
    for a in adapters:
        assert not a.up.weight.any() and not a.up.bias.any() and not a.down.bias.any() and a.down.weight.any()


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_default_reads_the_residual_stream_beside_the_mlp(family):
    """Released code: x' + mlp(norm2(x')) + 0.1 * up(relu(down(x'))), x' before the MLP's norm."""
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family), "adaptformer")
    moved(model).eval()
    for old, new in zip(anatomy(plain).blocks, anatomy(model).blocks):
        wrapped = new.module.mlp
        assert isinstance(wrapped, AdaptMLP) and wrapped.scale == 0.1
        assert isinstance(new.module.norm2, torch.nn.Identity), "the pre-MLP norm moved into the wrapper"
        x = torch.randn(2, 7, old.dim)
        a = wrapped.adapter
        expected = old.mlp(old.norms[1](x)) + 0.1 * a.up(torch.relu(a.down(x)))
        torch.testing.assert_close(wrapped(x), expected)


def test_norm_input_reads_the_mlps_normalised_input():
    """Paper Eq. 3-4: mlp(LN(x')) + s * adapter(LN(x')); the block keeps its norm."""
    model, _, _ = build(tiny("vit"), "adaptformer:input=norm:scale=0.5")
    moved(model).eval()
    blk = model.blocks[0]
    assert not isinstance(blk.norm2, torch.nn.Identity)
    x = torch.randn(2, 17, 48)
    x1 = x + blk.attn(blk.norm1(x))
    h = blk.norm2(x1)
    a = blk.mlp.adapter
    expected = x1 + blk.mlp.mlp(h) + 0.5 * a.up(torch.relu(a.down(h)))
    torch.testing.assert_close(blk(x), expected)


def test_dropout_acts_on_the_bottleneck_in_training_only():
    model, _, _ = build(tiny("vit"), "adaptformer:dropout=0.5")
    wrapped = moved(model).blocks[0].mlp
    x = torch.randn(4, 17, 48)
    wrapped.train()
    assert not torch.equal(wrapped(x), wrapped(x))
    wrapped.eval()
    torch.testing.assert_close(wrapped(x), wrapped(x), rtol=0, atol=0)


def test_vit_b16_count_is_the_vtab_tables_016m():
    """12 x (768*8+8 + 8*768+768) = 156,768 (0.16M in the VTAB-1k tables); bottleneck 64, the AdaptFormer
    paper's own default, is 1,189,632."""
    spec = BackboneSpec("vit_base_patch16_224", pretrained=False)
    for r in (8, 64):
        _, counts, _ = build(spec, f"adaptformer:bottleneck={r}", 100)
        assert counts.trainable_excl_head == counts.added == 12 * (768 * r + r + r * 768 + 768)
    _, counts, _ = build(spec, "adaptformer", 100)
    assert round(counts.trainable_excl_head / 1e6, 2) == 0.16


def test_not_mergeable_and_bad_options_refused():
    model, _, _ = build(tiny("vit"), "adaptformer")
    with pytest.raises(UserError, match="cannot be merged"):
        parse_method_spec("adaptformer").merge(model)
    for bad in ("bottleneck=0", "scale=0", "dropout=1", "input=pre"):
        with pytest.raises(UserError):
            parse_method_spec(f"adaptformer:{bad}")


def with_drop_path(family: str, rate: float) -> BackboneSpec:
    spec = tiny(family)
    return BackboneSpec(spec.name, {**spec.args, "drop_path_rate": rate}, pretrained=False)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_drop_path_drops_the_mlp_never_the_adapter(family):
    """Released block: x + drop_path(mlp(norm2(x))) + adapt_x. Per sample, in training, the wrapper gives either
    s * adapter(x) (the MLP dropped) or mlp(norm(x)) / keep + s * adapter(x); both happen."""
    model, _, _ = build(with_drop_path(family, 0.5), "adaptformer:dropout=0")
    moved(model)
    wrapped = anatomy(model).blocks[-1].module.mlp  # timm's rates rise with depth: the last block's is 0.5
    keep = 1 - wrapped.drop_path.drop_prob
    assert keep == 0.5
    x = torch.randn(64, 5, wrapped.adapter.down.in_features)
    torch.manual_seed(0)
    out = wrapped.train()(x)
    with torch.no_grad():
        adapter = 0.1 * wrapped.adapter(x)
        mlp = wrapped.mlp(wrapped.norm(x))
    dropped = [torch.allclose(o, a) for o, a in zip(out, adapter)]
    for o, a, m, d in zip(out, adapter, mlp, dropped):
        if not d:
            torch.testing.assert_close(o, m / keep + a)
    assert any(dropped) and not all(dropped)


def test_training_draws_as_the_released_block():
    """One seed, the released order of draws: the attention's drop-path, the adapter's dropout, the MLP's drop-path
    (on the MLP alone). The block's training-mode output is the released forward computed from its parts."""
    from timm.layers import DropPath

    plain, _, _ = build(with_drop_path("vit", 0.5), "linear")
    model, _, _ = build(with_drop_path("vit", 0.5), "adaptformer:dropout=0.5")
    moved(model)
    old, new = plain.blocks[1], model.blocks[1]  # drop-path 0.5 (timm: linspace(0, rate, depth))
    adapter = next(m.adapter for m in new.modules() if isinstance(m, AdaptMLP)).train()
    drop_path = DropPath(0.5).train()
    x = torch.randn(16, 17, 48)
    torch.manual_seed(3)
    out = new.train()(x)
    torch.manual_seed(3)
    with torch.no_grad():
        x1 = x + drop_path(old.attn(old.norm1(x)))
        adapt_x = 0.1 * adapter(x1)
        expected = x1 + drop_path(old.mlp(old.norm2(x1))) + adapt_x
    torch.testing.assert_close(out, expected)
