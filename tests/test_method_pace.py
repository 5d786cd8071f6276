"""PACE: at sigma = lam = 0 it is its base exactly; noise only in training; the loss in closed form for a fixed draw;
the per-depth sigma rule; the frozen backbone bit-identical after a step through the loop's `backward`; merges; and
loramul_vptadd's count and fold."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.pace import PACE, Noisy, PACEConfig, consistency, paired
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import backward, make_optimizer
from petlbench.weights import same_architecture
from tests.families import tiny

CE = nn.CrossEntropyLoss()


def build(spec, backbone=None):
    method = parse_method_spec(spec)
    model, counts, _ = build_model(backbone or tiny("vit"), method, 5, seed=0)
    torch.manual_seed(1)  # trained-looking adapters, the same in every model built from the same base
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return method, model, counts


def batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)


@pytest.mark.parametrize("base", ["loramul_vptadd", "adapter", "lora"])
def test_zero_noise_and_weight_is_the_base_exactly(base):
    plain, plain_model, plain_counts = build(base)
    pace, pace_model, pace_counts = build(f"pace:base={base}:sigma=0:lam=0")
    assert pace_counts.trainable == plain_counts.trainable
    assert sum(isinstance(m, Noisy) for m in pace_model.modules()) > 0
    x, y = batch()
    for mode in ("train", "eval"):
        plain_model.train(mode == "train"), pace_model.train(mode == "train")
        torch.manual_seed(3)  # the adapter's dropout draws alike
        a = plain.training_loss(plain_model, x, y, CE)
        torch.manual_seed(3)
        b = pace.training_loss(pace_model, x, y, CE)
        assert torch.equal(a, b)
        torch.manual_seed(3)
        logits = plain_model(x)
        torch.manual_seed(3)
        assert torch.equal(logits, pace_model(x))


def test_noise_only_in_training():
    _, plain_model, _ = build("loramul_vptadd")
    _, model, _ = build("pace:sigma=1.2:lam=1")
    x, _ = batch()
    plain_model.eval(), model.eval()
    assert torch.equal(plain_model(x), model(x))
    model.train(), plain_model.train()
    one, two = model(x), model(x)
    assert not torch.allclose(one, two) and not torch.allclose(one, plain_model(x))


def test_noise_is_per_sample_and_channel_shared_by_tokens():
    inner = nn.Linear(6, 8)
    noisy = Noisy(inner, sigma=0.5).train()
    x = torch.randn(3, 7, 6)
    torch.manual_seed(4)
    out = noisy(x)
    torch.manual_seed(4)
    eps = torch.randn(3, 1, 8)
    torch.testing.assert_close(out, inner(x) * (1 + 0.5 * eps), rtol=0, atol=1e-6)
    assert torch.equal(noisy.eval()(x), inner(x))


class Toy(nn.Module):
    """logits = W x + noisy(B x): the two passes differ by sigma * (B x) * (e1 - e2)."""

    def __init__(self, sigma):
        super().__init__()
        self.w, self.branch = nn.Linear(6, 4), Noisy(nn.Linear(6, 4, bias=False), sigma)

    def forward(self, x):
        return self.w(x) + self.branch(x)


def test_loss_is_ce_plus_lambda_consistency_in_closed_form():
    sigma, lam = 0.7, 2.5
    method = PACE(PACEConfig(sigma=sigma, lam=lam))
    toy = Toy(sigma).train()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    torch.manual_seed(6)
    loss = method.training_loss(toy, x, y, CE)
    torch.manual_seed(6)
    e = torch.randn(10, 4)  # the one draw of the stacked batch: rows 0..4 the first pass, 5..9 the second
    e1, e2 = e[:5], e[5:]
    bx = toy.branch.inner(x)
    first = toy.w(x) + bx * (1 + sigma * e1)
    expected = CE(first, y) + lam * (sigma ** 2 * bx ** 2 * (e1 - e2) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert consistency(first, first) == 0


def test_sigma_falls_with_depth_first_block_clean():
    spec = BackboneSpec("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4,
                                                 "num_heads": 3}, pretrained=False)
    _, model, _ = build("pace:sigma=1.2", spec)
    per_block = [sorted({m.sigma for m in block.modules() if isinstance(m, Noisy)}) for block in model.blocks]
    assert per_block == [[0.0], [1.2], [pytest.approx(0.9)], [pytest.approx(0.6)]]  # s (L + 1 - i) / L, L = 4
    _, flat, _ = build("pace:sigma=1.2:depth=constant", spec)
    assert {m.sigma for m in flat.modules() if isinstance(m, Noisy)} == {1.2}


def test_shared_drop_path_gives_both_copies_one_mask():
    spec = BackboneSpec("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2,
                                                 "num_heads": 3, "drop_path_rate": 0.5}, pretrained=False)
    _, model, _ = build("pace:sigma=0", spec)
    model.train()
    x, _ = batch()
    with paired(model):
        first, second = model(torch.cat([x, x])).chunk(2)
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)  # no noise: only drop path could differ


def test_step_leaves_the_frozen_backbone_bit_identical():
    method, model, _ = build("pace")
    with torch.no_grad():  # timm starts biases at zero, which would hold back delta_b's gradient (b * delta_b)
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not m.bias.requires_grad:
                m.bias.normal_(0, 0.1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(decay_rule=method.decay_rule, weight_decay=1e-4)
    optimizer = make_optimizer(model, cfg)
    x, y = batch()
    loss = backward(model, x, y, 2, CE, torch.device("cpu"), None, objective=method.training_loss)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trained and loss.item() > 0
    optimizer.step()
    after = model.state_dict()
    params = dict(model.named_parameters())
    for key, value in before.items():
        moved = not torch.equal(value, after[key])
        assert moved == (key in trained and params[key].requires_grad), key


def test_merge_is_a_plain_timm_model_with_equal_logits():
    method, model, _ = build("pace")
    x, _ = batch()
    model.eval()
    with torch.no_grad():
        expected = model(x)
        merged = method.merge(model)
        reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                      embed_dim=48, depth=2, num_heads=3, num_classes=5)
        assert same_architecture(merged, reference) is None
        assert (merged(x) - expected).abs().max() < 1e-5


def test_loramul_vptadd_count_on_vit_b16():
    _, counts, _ = build_model(BackboneSpec("vit_base_patch16_224", pretrained=False),
                               parse_method_spec("loramul_vptadd"), 100, seed=0)
    r, d, hidden = 10, 768, 3072

    def per(out, inp):  # D (out r) + U (r in) + delta_b (out) + P_d (in r) + P_u (r)
        return out * r + r * inp + out + inp * r + r
    assert counts.added == 12 * (per(3 * d, d) + per(d, d) + per(hidden, d) + per(d, hidden)) == 2_203_104


def test_bad_bases_are_refused_in_one_line():
    with pytest.raises(UserError, match="cannot be pace"):
        parse_method_spec("pace:base=pace")
    with pytest.raises(UserError, match="no branch"):
        build_model(tiny("vit"), parse_method_spec("pace:base=bitfit"), 5, seed=0)
    with pytest.raises(UserError, match="unknown method"):
        parse_method_spec("pace:base=nosuch")
    assert parse_method_spec("pace:base=adapter(bottleneck=4,placement=both)").bases[0].config.bottleneck == 4
