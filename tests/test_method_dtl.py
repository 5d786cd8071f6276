"""DTL: the compact side network in closed form, its parameter count, what trains, and the memory property (no
autograd record in the blocks before the CSN adds back)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.engine.decay import exempt
from petlbench.errors import UserError
from petlbench.params import build_model, meta_counts
from petlbench.registry import parse_method_spec
from tests.families import tiny

VIT = BackboneSpec("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4,
                                            "num_heads": 3}, pretrained=False)
SWIN = BackboneSpec("swin_tiny_patch4_window7_224", {"img_size": 32, "patch_size": 4, "window_size": 2,
                                                     "embed_dim": 24, "depths": (2, 2), "num_heads": (1, 2)},
                    pretrained=False)


def build(spec: str, backbone: BackboneSpec = VIT, classes: int = 5):
    return build_model(backbone, parse_method_spec(spec), classes, seed=0)


def randomise(model):
    """Trained-looking CSN tensors (B starts at zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.3)


def plain(backbone: BackboneSpec = VIT, classes: int = 5):
    return build("linear", backbone, classes)[0]


def test_vit_b16_counts_are_the_papers():
    """L x 2 x d x r: 12 x 2 x 768 x 2 = 36,864 (the 0.04M of DTL's VTAB-1k row); DTL+ adds one d x k x k
    depth-wise conv (k = 5: 19,200; k = 3: 6,912)."""
    spec = BackboneSpec("vit_base_patch16_224", pretrained=False)
    dtl = meta_counts(spec, parse_method_spec("dtl"))
    assert dtl.trainable_excl_head == dtl.added == 12 * 2 * 768 * 2 == 36_864
    assert round(dtl.trainable_excl_head / 1e6, 2) == 0.04
    for k in (3, 5):
        plus = meta_counts(spec, parse_method_spec(f"dtl:fusion={k}"))
        assert plus.trainable_excl_head == 36_864 + 768 * k * k
    swin = meta_counts(BackboneSpec("swin_base_patch4_window7_224", pretrained=False),
                       parse_method_spec("dtl:rank=4:read_from=4:add_from=14"))  # the released Swin-B scripts
    assert swin.trainable_excl_head == 2 * 4 * (18 * 512 + 2 * 1024)  # blocks 4-21 (width 512), 22-23 (1024)


def test_count_on_a_small_vit_and_what_trains():
    model, counts, _ = build("dtl:rank=3")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert counts.trainable_excl_head == 4 * 2 * 48 * 3
    assert trained == {f"blocks.{part}.{i}.weight" for part in ("down", "up") for i in "0123"} | {"head.weight",
                                                                                                  "head.bias"}
    assert all(torch.count_nonzero(model.blocks.up[i].weight) == 0 for i in "0123"), "B starts at zero"


def csn_reference(model, x, rank_maps, beta, add_from, fuse=None):
    """The formula, on the backbone's own modules: s += B_i A_i x_i, x_{i+1} = block_i(x_i) + fuse(swish(s))
    for i >= add_from; mean of the patch tokens, the final norm, the head."""
    x = model._pos_embed(model.patch_embed(x))
    s = 0.0
    for i, block in enumerate(model.blocks.blocks):
        down, up = rank_maps[i]
        s = s + x @ down.t() @ up.t()
        x = block(x)
        if i >= add_from:
            z = s * torch.sigmoid(beta * s)
            x = x + (fuse(z) if fuse else z)
    return model.head(model.fc_norm(x[:, model.num_prefix_tokens:].mean(dim=1)))


@pytest.mark.parametrize("fusion", [0, 3])
def test_forward_is_the_formula(fusion):
    model, _, _ = build(f"dtl:beta=2.0:fusion={fusion}")
    randomise(model)
    side = model.blocks
    maps = [(side.down[str(i)].weight, side.up[str(i)].weight) for i in range(4)]
    fuse = None
    if fusion:
        def fuse(z):  # the class token passes, the 4x4 patch grid is convolved
            grid = z[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 1, 2)
            conv = nn.functional.conv2d(grid, side.fuse.conv.weight, padding=1, groups=48)
            return torch.cat([z[:, :1], conv.permute(0, 2, 3, 1).reshape(2, 16, 48)], dim=1)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), csn_reference(model, x, maps, 2.0, 2, fuse), rtol=1e-5, atol=1e-6)


def test_at_init_it_is_the_backbone_with_dtls_head():
    x = torch.randn(3, 3, 32, 32)
    base = plain().eval()
    with torch.no_grad():  # DTL's head: mean of the patch tokens, then the backbone's final norm
        feats = base.blocks(base._pos_embed(base.patch_embed(x)))
        expected = base.head(base.norm(feats[:, 1:].mean(dim=1)))
    for spec in ("dtl", "dtl:fusion=3"):
        torch.testing.assert_close(build(spec)[0].eval()(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(build("dtl:pool=token")[0].eval()(x), base(x), rtol=0, atol=0)
    torch.testing.assert_close(build("dtl", SWIN)[0].eval()(x), plain(SWIN).eval()(x), rtol=0, atol=0)


def test_swin_sums_restart_at_every_stage():
    """Blocks 0-1 (stage 0) and 2-3 (stage 1): each stage's side network sums its own blocks' maps only."""
    model, counts, _ = build("dtl:add_from=1:beta=3.0", SWIN)
    randomise(model)
    model.eval()
    stage0, stage1 = model.layers[0].blocks, model.layers[1].blocks
    assert counts.trainable_excl_head == 2 * 2 * 24 * 2 + 2 * 2 * 48 * 2
    x = torch.randn(2, 3, 32, 32)

    def run(side, x):
        s = 0.0
        for j, block in enumerate(side.blocks):
            i = str(side.first + j)
            s = s + x @ side.down[i].weight.t() @ side.up[i].weight.t()
            x = block(x)
            if side.first + j >= 1:
                x = x + s * torch.sigmoid(3.0 * s)
        return x

    h = model.patch_embed(x)
    h = run(stage1, model.layers[1].downsample(run(stage0, h)))
    torch.testing.assert_close(model(x), model.forward_head(model.norm(h)), rtol=1e-5, atol=1e-6)


def test_no_autograd_record_before_the_csn_adds_back():
    """DTL's memory claim: blocks 0..M read nothing that trains, so autograd saves nothing for them; the blocks
    after M carry the CSN's output and are backpropagated through (as the released code does)."""
    model, _, _ = build("dtl:add_from=2")
    randomise(model)
    model.train()
    current, saved, out_grad = [None], {}, {}

    def enter(i):
        current[0] = i

    def leave(i, out):
        out_grad[i], current[0] = out.requires_grad, None
    for i, block in enumerate(model.blocks.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: enter(i))
        block.register_forward_hook(lambda m, a, out, i=i: leave(i, out))

    def pack(t):
        saved[current[0]] = saved.get(current[0], 0) + 1
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(torch.randn(2, 3, 32, 32))
    assert out_grad == {0: False, 1: False, 2: False, 3: True}
    assert 0 not in saved and 1 not in saved and 2 not in saved, "no activation of blocks 0..M is kept"
    assert saved.get(3, 0) > 0, "block M + 1 is backpropagated through"
    logits.sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_adamw_step_leaves_the_frozen_set_bit_identical():
    model, _, task_keys = build("dtl:fusion=3")
    randomise(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    nn.functional.cross_entropy(model.train()(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    opt.step()
    after = model.state_dict()
    assert "fc_norm.weight" in after and "norm.weight" not in after, "the final norm moved after the pooling"
    for key, value in before.items():
        assert torch.equal(after[key], value) == (key not in trained), key
    assert trained <= set(task_keys)


def test_weight_decay_spares_only_the_head_bias():
    model, _, _ = build("dtl:fusion=3")
    spared = exempt(model, "timm", "adamw") & {id(p) for p in model.parameters() if p.requires_grad}
    assert spared == {id(model.head.bias)}, "as DTL's code: names ending '.bias' (of what trains, the head's)"


def test_misfits_are_refused():
    for bad, match in (("dtl:add_from=4", "add_from"), ("dtl:read_from=3:add_from=2", "read_from"),
                       ("dtl:rank=49", "rank")):
        with pytest.raises(UserError, match=match):
            build(bad)
    for bad in ("rank=0", "beta=0", "pool=cls", "fusion=-1"):
        with pytest.raises(UserError):
            parse_method_spec(f"dtl:{bad}")


def test_declared_recipe_and_defaults():
    cls = type(parse_method_spec("dtl"))
    assert cls.recipe == "noah" and cls.decay_rule == "timm"
    assert cls.train_defaults == {"lr": 0.008, "weight_decay": 0.05, "batch_size": 32}
    assert cls.backbone_defaults == {"mean": "backbone", "std": "backbone"}
    assert cls.supports("vit") and cls.supports("swin") and not cls.supports("resnet")
    assert tiny("vit").name == VIT.name
