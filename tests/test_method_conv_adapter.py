"""Conv-Adapter: where the adapter sits (ResNet: after the k x k conv's norm and ReLU; ConvNeXt: beside the
depth-wise conv and the downsampling convs, as the released code), what it computes, its init (active from the
start, not the identity), and its size on ResNet-50 and ConvNeXt-B."""
from __future__ import annotations

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.methods.conv_adapter import ConvAdapterBranch
from petlbench.params import build_model, meta_counts
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method: str):
    return build_model(spec, parse_method_spec(method), NUM_CLASSES, seed=0)


def adapters(model):
    found = [m for m in model.modules() if isinstance(m, ConvAdapterBranch)]
    assert found, "the method added adapters"
    return found


@pytest.mark.parametrize("family", ["resnet", "convnext"])
@pytest.mark.parametrize("placement", ["conv", "block"])
def test_active_at_init_and_exactly_the_frozen_model_with_zero_scale(family, placement):
    """The paper's init (backbone-like convs, scale 1) is not the identity; zeroing the scales gives back the
    linear probe's logits with the same seed, so nothing else about the model changed."""
    x = torch.randn(2, 3, 32, 32)
    plain, _, _ = build(tiny(family), "linear")
    adapted, _, _ = build(tiny(family), f"conv_adapter:placement={placement}:compression=2")
    plain.eval(), adapted.eval()
    assert not torch.allclose(adapted(x), plain(x))
    assert all(torch.equal(a.scale, torch.ones_like(a.scale)) for a in adapters(adapted))
    with torch.no_grad():
        for a in adapters(adapted):
            a.scale.zero_()
    torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=0)


def test_convnext_conv_placement_sits_beside_the_depthwise_conv():
    """The released ConvNeXt Block: dwconv(x) + adapter(x), before the block's norm."""
    plain, _, _ = build(tiny("convnext"), "linear")
    model, _, _ = build(tiny("convnext"), "conv_adapter:compression=4")
    names = {id(m): name for name, m in plain.named_modules()}
    for plain_block in anatomy(plain).blocks:  # the same blocks, by name, in the adapted model
        wrapped = model.get_submodule(names[id(plain_block.module)]).conv_dw
        conv = plain_block.module.conv_dw
        assert wrapped.frozen.weight.shape == conv.weight.shape
        down = wrapped.adapter.down
        assert down.kernel_size == conv.kernel_size and down.stride == conv.stride and down.padding == conv.padding
        assert down.out_channels == max(1, conv.in_channels // 4) and down.groups == down.out_channels
        x = torch.randn(2, conv.in_channels, 8, 8)
        torch.testing.assert_close(wrapped(x), wrapped.frozen(x) + wrapped.adapter(x))
        assert wrapped(x).shape == conv(x).shape


def resnet_spec(kind: str) -> BackboneSpec:
    if kind == "bottleneck":  # ResNet-50's blocks, one per stage
        return BackboneSpec("resnet50", {"layers": [1, 1, 1, 1], "zero_init_last": False}, pretrained=False)
    return tiny("resnet")  # resnet18: basic blocks, whose k x k conv is conv1


@pytest.mark.parametrize("kind", ["bottleneck", "basic"])
def test_resnet_adapter_is_added_after_the_convs_norm_and_relu(kind):
    """The released Bottleneck: h -> relu(bn2(conv2(h))) + adapter(h) -> conv3 (basic blocks: the same on conv1).
    The block's output, computed by hand from the frozen model's parts and the adapter, is the adapted block's."""
    plain, _, _ = build(resnet_spec(kind), "linear")
    model, _, _ = build(resnet_spec(kind), "conv_adapter:compression=4")
    with torch.no_grad():  # non-trivial BN statistics and affines: where the sum sits then matters
        for m in [*plain.modules(), *model.modules()]:
            if isinstance(m, torch.nn.BatchNorm2d):
                g = torch.Generator().manual_seed(m.num_features)
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
    plain.eval(), model.eval()
    for old, new in zip(anatomy(plain).blocks, anatomy(model).blocks):
        b = old.module
        (adapter,) = [m for m in new.module.modules() if isinstance(m, ConvAdapterBranch)]
        x = torch.randn(2, old.in_dim, 8, 8)
        with torch.no_grad():
            if kind == "bottleneck":
                h = torch.relu(b.bn1(b.conv1(x)))
                h = torch.relu(b.bn2(b.conv2(h))) + adapter(h)
                y = b.bn3(b.conv3(h))
            else:
                h = torch.relu(b.bn1(b.conv1(x))) + adapter(x)
                y = b.bn2(b.conv2(h))
            shortcut = b.downsample(x) if b.downsample is not None else x
            expected = torch.relu(y + shortcut)
            torch.testing.assert_close(new.module(x), expected, rtol=1e-5, atol=1e-5)
        assert adapter.down.stride == old.convs[1 if kind == "bottleneck" else 0].stride


def test_convnext_adapts_the_three_downsampling_convs():
    """The released ConvNeXt also puts an adapter (2 x 2, stride 2, C_in -> C_out) beside each downsampling conv
    between stages, added to its output."""
    model, _, _ = build(tiny("convnext"), "conv_adapter:compression=2")
    wrapped = [stage.downsample[1] for stage in model.stages[1:]]
    assert len(wrapped) == 3
    for w in wrapped:
        conv, down = w.frozen, w.adapter.down
        assert (down.kernel_size, down.stride, down.padding) == (conv.kernel_size, conv.stride, conv.padding) == \
            ((2, 2), (2, 2), (0, 0))
        assert w.adapter.up.out_channels == conv.out_channels and down.out_channels == conv.in_channels // 2
        x = torch.randn(2, conv.in_channels, 8, 8)
        torch.testing.assert_close(w(x), conv(x) + w.adapter(x))
        assert w(x).shape == (2, conv.out_channels, 4, 4)


def convnext_count(dims, depths, g):
    """Per block of width d: 49d + d/g (grouped 7x7 conv, g inputs per group) + d^2/g + d (1x1 conv) + d (scale);
    per downsampling a -> o: 4a + a/g (grouped 2x2 conv) + a*o/g + o (1x1 conv) + o (scale)."""
    blocks = sum(n * (49 * d + d // g + d * d // g + 2 * d) for d, n in zip(dims, depths))
    downs = sum(4 * a + a // g + a * o // g + 2 * o for a, o in zip(dims[:-1], dims[1:]))
    return blocks, downs


def test_convnext_count_in_closed_form():
    _, counts, _ = build(tiny("convnext"), "conv_adapter:compression=2")
    assert counts.trainable_excl_head == sum(convnext_count((8, 16, 24, 32), (1, 1, 1, 1), 2))


def test_convnext_base_count_is_the_released_2324672():
    """The released code's ConvNeXt-B (depths 3, 3, 27, 3; widths 128..1024; adapt_size 8): 2,231,376 in the blocks
    + 93,296 at the downsamplings = 2,324,672 trainable parameters, the head excluded."""
    assert convnext_count((128, 256, 512, 1024), (3, 3, 27, 3), 8) == (2_231_376, 93_296)
    counts = meta_counts(BackboneSpec("convnext_base", pretrained=False), parse_method_spec("conv_adapter"))
    assert counts.trainable_excl_head == 2_324_672


def test_block_placement_adds_to_the_block_output():
    model, _, _ = build(tiny("resnet"), "conv_adapter:placement=block")
    model.eval()
    stage = model.layer2  # a downsampling block: the adapter carries the block's stride
    wrapped = stage[0]
    x = torch.randn(2, wrapped.adapter.down.in_channels, 8, 8)
    out = wrapped(x)
    assert out.shape == (2, wrapped.adapter.up.out_channels, 4, 4)
    torch.testing.assert_close(out, wrapped.frozen(x) + wrapped.adapter(x))


def test_resnet50_count():
    """Per bottleneck of width w: 9w + w/g (grouped 3x3 conv) + w^2/g + w (1x1 conv) + w (scale).

    g = 8 gives 199,192 (0.85% of ResNet-50's 23.5M); g = 4 gives 356,848 (1.5%). The paper quotes about 3.5%
    of ResNet-50 for Conv-Adapter overall, which neither reproduces (see the method's report)."""
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    spec = BackboneSpec("resnet50", pretrained=False)
    for g in (8, 4):
        _, counts, _ = build_model(spec, parse_method_spec(f"conv_adapter:compression={g}"), 100, seed=0)
        assert counts.trainable_excl_head == sum(9 * w + w // g + w * w // g + 2 * w for w in widths)
    assert counts.head == 2048 * 100 + 100


def test_bad_compression_is_refused():
    with pytest.raises(UserError, match="compression"):
        parse_method_spec("conv_adapter:compression=0")
