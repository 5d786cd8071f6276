"""VPT prompt-pad on ConvNets: the image is kept whole and surrounded by the learned border, which is all
that trains besides the head; its size is VPT's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.vpt_pad import PaddedStem
from petlbench.params import build_model
from petlbench.recipes import IMAGENET_MEAN, IMAGENET_STD
from petlbench.registry import parse_method_spec
from tests.families import tiny

NUM_CLASSES = 5


def build(spec, method: str):
    return build_model(spec, parse_method_spec(method), NUM_CLASSES, seed=0)


def test_border_surrounds_the_untouched_image():
    p, size = 3, (16, 16)
    pad = PaddedStem(nn.Identity(), p, size, "random")
    x = torch.randn(2, 3, *size)
    out = pad(x)
    assert out.shape == (2, 3, 16 + 2 * p, 16 + 2 * p)
    assert torch.equal(out[:, :, p:-p, p:-p], x)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    caps, sides = (pad.top_bottom - mean) / std, (pad.left_right - mean) / std  # pixels in [0, 1], normalised
    torch.testing.assert_close(out[:1, :, :p], caps[:, :, :p])
    torch.testing.assert_close(out[:1, :, -p:], caps[:, :, p:])
    torch.testing.assert_close(out[:1, :, p:-p, :p], sides[..., :p])
    torch.testing.assert_close(out[:1, :, p:-p, -p:], sides[..., p:])
    assert 0 <= pad.top_bottom.min() and pad.top_bottom.max() <= 1


def test_gaussian_border_is_used_as_is():
    pad = PaddedStem(nn.Identity(), 2, (8, 8), "gaussian")
    out = pad(torch.zeros(1, 3, 8, 8))
    torch.testing.assert_close(out[:, :, :2], pad.top_bottom[:, :, :2])


@pytest.mark.parametrize("family", ["resnet", "convnext"])
def test_stem_sees_the_grown_image_and_only_the_border_trains(family):
    size = 224  # timm's pretrained input size, kept by the tiny models: the strips are sized for it
    model, counts, _ = build(tiny(family), "vpt_pad:pixels=4")
    pad = next(m for m in model.modules() if isinstance(m, PaddedStem))
    seen = {}
    pad.stem.register_forward_pre_hook(lambda m, args: seen.update(shape=tuple(args[0].shape)))
    model(torch.randn(2, 3, size, size))
    assert seen["shape"] == (2, 3, size + 8, size + 8)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in model.get_classifier().parameters()}
    assert trainable - head == {id(pad.top_bottom), id(pad.left_right)}
    assert counts.trainable_excl_head == 12 * 4 * (size + 4)


def test_strips_at_the_nominal_size_are_used_without_resizing():
    pad = PaddedStem(nn.Identity(), 2, (8, 8), "gaussian")
    out = pad(torch.zeros(1, 3, 8, 8))
    assert torch.equal(out[:, :, 2:-2, :2], pad.left_right[..., :2])  # bit-exact: no interpolation


def test_other_image_sizes_get_resized_strips():
    pad = PaddedStem(nn.Identity(), 2, (8, 8), "random")
    assert pad(torch.randn(1, 3, 12, 10)).shape == (1, 3, 16, 14)


def test_resnet50_count():
    """Two strips: 3 x 2p x (S + 2p) and 3 x S x 2p, i.e. 12 p (S + p): 13,740 for VPT's default p = 5 at 224."""
    _, counts, _ = build_model(BackboneSpec("resnet50", pretrained=False), parse_method_spec("vpt_pad"), 100, seed=0)
    assert counts.trainable_excl_head == 12 * 5 * (224 + 5) == 13740


def test_bad_pixels_are_refused():
    with pytest.raises(UserError, match="pixels"):
        parse_method_spec("vpt_pad:pixels=0")
