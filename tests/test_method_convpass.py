"""Convpass: the model starts unchanged, bypasses sit beside both the attention and the MLP on their normalised
input, the 3x3 conv sees the patch tokens on their grid (and the class token alone as a 1x1 map), its size on
ViT-B/16 against the paper's 0.33M."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.convpass import Bypassed, ConvBypass
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5
GRID = 4  # tiny ViT: 32 x 32 input, 8 x 8 patches


def build(spec, method, num_classes=NUM_CLASSES):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def moved(model):
    """A 'trained' Convpass: every bypass tensor away from its init."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConvBypass):
                for p in m.parameters():
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("conv_init", ["xavier", "identity"])
def test_starts_as_the_frozen_model(conv_init):
    """Up-projection zero: exactly the linear probe's logits with the same seed."""
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny("vit"), "linear")
    adapted, _, _ = build(tiny("vit"), f"convpass:conv_init={conv_init}")
    torch.testing.assert_close(adapted.eval()(x), plain.eval()(x), rtol=0, atol=0)
    bypasses = [m for m in adapted.modules() if isinstance(m, ConvBypass)]
    assert len(bypasses) == 2 * 2  # attention and MLP of both blocks
    for b in bypasses:
        assert not b.up.weight.any() and not b.up.bias.any() and not b.conv.bias.any()
        centre_is_identity = torch.equal(b.conv.weight[:, :, 1, 1], torch.eye(8)) and \
            not b.conv.weight[:, :, [0, 2]].any() and not b.conv.weight[:, :, :, [0, 2]].any()
        assert centre_is_identity == (conv_init == "identity")


def test_bypasses_are_parallel_to_attention_and_mlp_on_the_normalised_input():
    """x1 = x + attn(n1) + s * bp_attn(n1), n1 = norm1(x); out = x1 + mlp(n2) + s * bp_mlp(n2), n2 = norm2(x1)."""
    plain, _, _ = build(tiny("vit"), "linear")
    model, _, _ = build(tiny("vit"), "convpass:scale=10")
    moved(model)
    old, new = plain.eval().blocks[0], model.blocks[0]
    assert isinstance(new.attn, Bypassed) and isinstance(new.mlp, Bypassed) and new.attn.scale == 10
    x = torch.randn(2, 1 + GRID * GRID, 48)
    n1 = old.norm1(x)
    x1 = x + old.attn(n1) + 10 * new.attn.bypass(n1)
    n2 = old.norm2(x1)
    expected = x1 + old.mlp(n2) + 10 * new.mlp.bypass(n2)
    torch.testing.assert_close(new(x), expected)


def test_the_conv_sees_the_patch_grid_and_the_class_token_alone():
    """Changing one patch token changes only the outputs of its 3x3 neighbourhood; the class token's output
    is its own 1x1 map (the conv's centre tap) and ignores the patches."""
    torch.manual_seed(0)
    bypass = ConvBypass(12, 4, (GRID, GRID), prefix=1, conv_init="xavier", dropout=0.1).eval()
    with torch.no_grad():
        for p in bypass.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1 + GRID * GRID, 12)
    row, col = 1, 2
    changed = x.clone()
    changed[0, 1 + row * GRID + col] += 1.0
    diff = (bypass(changed) - bypass(x)).abs().sum(-1)[0]
    assert diff[0] == 0, "the class token does not see the patches"
    touched = {(i // GRID, i % GRID) for i in range(GRID * GRID) if diff[1 + i] > 0}
    assert touched == {(r, c) for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)}
    qgelu = bypass.act
    z = qgelu(bypass.down(x[:, :1]))
    cls = z @ bypass.conv.weight[:, :, 1, 1].T + bypass.conv.bias
    torch.testing.assert_close(bypass(x)[:, :1], bypass.up(qgelu(cls)))


def test_quick_gelu_and_dropout_in_training_only():
    bypass = ConvBypass(12, 4, (GRID, GRID), prefix=1, conv_init="xavier", dropout=0.5)
    nn.init.normal_(bypass.up.weight)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(bypass.act(x), x * torch.sigmoid(1.702 * x))
    tokens = torch.randn(2, 1 + GRID * GRID, 12)
    assert not torch.equal(bypass.train()(tokens), bypass(tokens))
    torch.testing.assert_close(bypass.eval()(tokens), bypass(tokens), rtol=0, atol=0)


def test_a_token_grid_other_than_the_models_is_refused():
    bypass = ConvBypass(12, 4, (GRID, GRID), prefix=1, conv_init="identity", dropout=0.0)
    with pytest.raises(UserError, match="4x4 patch tokens"):
        bypass(torch.randn(1, 1 + 25, 12))


def test_vit_b16_count_is_the_papers_033m():
    """12 blocks x 2 bypasses x (768*8+8 + 8*8*9+8 + 8*768+768) = 327,552 (0.33M)."""
    spec = BackboneSpec("vit_base_patch16_224", pretrained=False)
    _, counts, _ = build(spec, "convpass", 100)
    assert counts.trainable_excl_head == counts.added == 24 * (768 * 8 + 8 + 8 * 8 * 9 + 8 + 8 * 768 + 768)
    assert round(counts.trainable_excl_head / 1e6, 2) == 0.33


def test_tune_grid_and_bad_options():
    cls = type(parse_method_spec("convpass"))
    assert cls.tune_grid == {"scale": [0.01, 0.1, 1.0, 10.0, 100.0], "conv_init": ["identity", "xavier"]}
    assert not cls.supports("swin")
    for bad in ("dim=0", "scale=0", "conv_init=zeros", "dropout=1"):
        with pytest.raises(UserError):
            parse_method_spec(f"convpass:{bad}")


def with_drop_path(rate: float) -> BackboneSpec:
    spec = tiny("vit")
    return BackboneSpec(spec.name, {**spec.args, "drop_path_rate": rate}, pretrained=False)


def test_the_bypass_draws_its_own_drop_path():
    """Per sample, in training, the sub-layer and its bypass are each kept (scaled by 1 / keep) or dropped on their
    own draws: all four combinations happen."""
    model, _, _ = build(with_drop_path(0.5), "convpass:dropout=0:scale=10")
    moved(model)
    wrapped = model.blocks[1].attn  # drop-path 0.5 (timm: linspace(0, rate, depth))
    keep = 1 - wrapped.drop_path.drop_prob
    assert keep == 0.5
    h = torch.randn(64, 1 + GRID * GRID, 48)
    torch.manual_seed(0)
    out = wrapped.train()(h)
    with torch.no_grad():
        branch, bypass = wrapped.frozen(h), 10 * wrapped.bypass(h)
    seen = set()
    for o, f, b in zip(out, branch, bypass):
        combos = {(kf, kb) for kf in (0, 1) for kb in (0, 1) if torch.allclose(o, (kf * f + kb * b) / keep)}
        assert len(combos) == 1
        seen |= combos
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_training_draws_as_the_released_forward_block():
    """One seed, the released forward_block: x + drop_path(attn(n1)) + drop_path(bypass(n1)) * s, then the same
    for the MLP, each drop_path call a draw of its own, in that order (the bypass's dropout drawn in between)."""
    from timm.layers import DropPath

    plain, _, _ = build(with_drop_path(0.5), "linear")
    model, _, _ = build(with_drop_path(0.5), "convpass:scale=10:dropout=0.5")
    moved(model)
    old, new = plain.blocks[1], model.blocks[1]
    drop_path = DropPath(0.5).train()
    bp_attn, bp_mlp = new.attn.bypass.train(), new.mlp.bypass.train()
    x = torch.randn(16, 1 + GRID * GRID, 48)
    torch.manual_seed(3)
    out = new.train()(x)
    torch.manual_seed(3)
    with torch.no_grad():
        x = x + drop_path(old.attn(old.norm1(x))) + drop_path(bp_attn(old.norm1(x))) * 10
        expected = x + drop_path(old.mlp(old.norm2(x))) + drop_path(bp_mlp(old.norm2(x))) * 10
    torch.testing.assert_close(out, expected)


# (scale, xavier_init) of the 19 released configs, JieShibo/PETL-ViT @026e4f1 convpass/vtab/configs/convpass/<task>.yaml
RELEASED = {"cifar": (0.1, False), "caltech101": (1, False), "dtd": (0.01, True), "oxford_flowers102": (0.1, True),
            "oxford_iiit_pet": (1, True), "svhn": (100, True), "sun397": (0.1, False), "patch_camelyon": (10, False),
            "eurosat": (10, False), "resisc45": (10, False), "diabetic_retinopathy": (1, False),
            "clevr_count": (1, False), "clevr_dist": (0.1, True), "dmlab": (10, False), "kitti": (10, True),
            "dsprites_loc": (100, True), "dsprites_ori": (0.1, True), "smallnorb_azi": (100, True),
            "smallnorb_ele": (1, True)}


def test_defaults_and_their_counts_are_the_released_configs():
    """The defaults text counts the repository's 19 configs (issue 17, fault 9), and the defaults still hold:
    the median scale (0.1, 1 and 10 tie at 5 each) and the more common init."""
    from collections import Counter
    from petlbench.methods.convpass import SOURCE
    scales = sorted(s for s, _ in RELEASED.values())
    counts, xavier = Counter(scales), sum(x for _, x in RELEASED.values())
    assert len(RELEASED) == 19 and counts[0.1] == counts[1] == counts[10] == 5 and xavier == 10
    cfg = parse_method_spec("convpass").config
    assert cfg.scale == scales[len(scales) // 2] == 1 and cfg.conv_init == ("xavier" if xavier > 19 / 2 else "identity")
    assert "of the 19 configs" in SOURCE and "tie (5 each" in SOURCE and "xavier on 10 of 19" in SOURCE
