"""RepAdapter: where the adapters sit and what trains, the ViT-B/16 count against PETL_Vision's, the group-wise
up-projection, and the exact fold into qkv / fc1 (merged logits equal, a plain timm model)."""
from __future__ import annotations

import pytest
import timm
import torch

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.repadapter import Adapted, RepAdapterBranch
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.weights import same_architecture
from tests.families import tiny


def build(spec, method="repadapter", num_classes=5):
    return build_model(spec, parse_method_spec(method), num_classes, seed=0)


def randomise(model):
    """Trained-looking adapters (they start as the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, RepAdapterBranch):
                for p in m.parameters():
                    p.normal_(0.0, 0.3)


def test_vit_b16_count_is_petl_visions():
    _, counts, _ = build(BackboneSpec("vit_base_patch16_224", pretrained=False), num_classes=100)
    d, h, g, adapters = 768, 8, 2, 24  # before attention and MLP of 12 blocks
    assert counts.trainable_excl_head == counts.added == adapters * (d * h + h + d * h // g + d) == 239_808
    h = 16  # PETL_Vision's cifar100 row: repadapter_bottleneck 16, inserted_parameters 461,184
    assert adapters * (d * h + h + d * h // g + d) == 461_184


def test_trainable_set_is_adapters_and_head():
    model, _, _ = build(tiny("vit"))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    per_block = {f"{part}.adapter.{p}" for part in ("attn.qkv", "mlp.fc1")
                 for p in ("down.weight", "down.bias", "up_weight", "up_bias")}
    assert trained == {f"blocks.{i}.{p}" for i in range(2) for p in per_block} | {"head.weight", "head.bias"}
    attn_only, _, _ = build(tiny("vit"), "repadapter:placement=attn")
    assert sum(isinstance(m, Adapted) for m in attn_only.modules()) == 2


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_starts_as_the_frozen_model(family):
    plain, _, _ = build(tiny(family), "linear")
    model, _, _ = build(tiny(family))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x), plain.eval()(x))


def test_up_projection_is_group_wise_as_a_grouped_conv():
    branch = RepAdapterBranch(12, 4, 2, 0.5, 0.0).eval()
    randomise(branch)
    conv = torch.nn.Conv1d(4, 12, 1, groups=2)
    with torch.no_grad():
        conv.weight.copy_(branch.up_weight.unsqueeze(-1)), conv.bias.copy_(branch.up_bias)
    z = torch.randn(3, 5, 4)
    torch.testing.assert_close(branch.up(z), conv(z.transpose(1, 2)).transpose(1, 2))
    x = torch.randn(3, 5, 12)
    m, c = branch.affine()
    torch.testing.assert_close(branch(x), x @ m.T + c)


@pytest.mark.parametrize("family", ["vit", "swin"])
@pytest.mark.parametrize("method", ["repadapter", "repadapter:placement=attn:groups=4:scale=5"])
def test_merge_folds_into_a_plain_timm_model(family, method):
    spec = tiny(family)
    model, _, _ = build(spec, method)
    randomise(model)
    x = torch.randn(3, 3, 32, 32)
    before = model.eval()(x)
    merged = parse_method_spec(method).merge(model)
    assert not any(isinstance(m, (Adapted, RepAdapterBranch)) for m in merged.modules())
    plain = timm.create_model(spec.name, pretrained=False, num_classes=5, **spec.args)
    assert same_architecture(merged, plain) is None
    plain.load_state_dict(merged.state_dict())  # strict
    assert (plain.eval()(x) - before).abs().max() < 1e-5


def test_groups_must_divide():
    with pytest.raises(UserError, match="groups"):
        build(tiny("vit"), "repadapter:groups=3")
