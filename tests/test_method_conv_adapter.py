"""Conv-Adapter: where the adapter sits, what it computes, its init (active from the start, not the identity),
and its size on ResNet-50."""
from __future__ import annotations

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy
from petlbench.errors import UserError
from petlbench.methods.conv_adapter import ConvAdapterBranch
from petlbench.params import build_model
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


@pytest.mark.parametrize("family,kxk", [("resnet", "conv1"), ("convnext", "conv_dw")])
def test_conv_placement_sits_beside_the_kxk_conv(family, kxk):
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family), "conv_adapter:compression=4")
    names = {id(m): name for name, m in plain.named_modules()}
    for plain_block in anatomy(plain).blocks:  # the same blocks, by name, in the adapted model
        wrapped = getattr(model.get_submodule(names[id(plain_block.module)]), kxk)
        conv = getattr(plain_block.module, kxk)  # resnet18 is made of basic blocks: the 3x3 conv is conv1
        assert wrapped.frozen.weight.shape == conv.weight.shape
        down = wrapped.adapter.down
        assert down.kernel_size == conv.kernel_size and down.stride == conv.stride
        assert down.out_channels == max(1, conv.in_channels // 4) and down.groups == down.out_channels
        x = torch.randn(2, conv.in_channels, 8, 8)
        torch.testing.assert_close(wrapped(x), wrapped.frozen(x) + wrapped.adapter(x))
        assert wrapped(x).shape == conv(x).shape


def test_bottleneck_adapter_is_beside_conv2():
    spec = BackboneSpec("resnet50", {"layers": [1, 1, 1, 1]}, pretrained=False)
    model, _, _ = build(spec, "conv_adapter")
    for block in anatomy(model).blocks:
        assert block.module.conv2.adapter.down.stride == block.module.conv2.frozen.stride


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
