"""CAVPT (methods/cavpt.py) on a tiny random open_clip CLIP: closed-form parameter counts (tiny and ViT-B/16); a step
moves CoOp's context, the VPT-deep prompts and the generator, and leaves both CLIP towers bit-identical; the classes
whose prompts enter are zero-shot CLIP's top K; the class-aware loss is the official one; the runner trains it
through the CLI. (The comparison with the official generator and block loop is a scratch script: README.)"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.params import build_model, count_params
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from tests.conftest import petlbench_cli

NAMES = ["red triangle", "blue circle", "green square", "dog", "yellow star"]
TINY = BackboneSpec("clip:tiny", {}, pretrained=False)  # image width 48, depth 2; text width 48, embed 32
WIDTH, TEXT_WIDTH, EMBED, DEPTH = 48, 48, 32, 2


def build(method: str, names=NAMES):
    torch.manual_seed(0)
    model, counts, keys = build_model(TINY, parse_method_spec(method), len(names), seed=0, classnames=names)
    return model.eval(), counts, keys


def generator(width: int, embed: int, classes: int) -> int:
    """meta (embed -> width, bias), W_q and W_k (width -> 32), W_v (width -> width), 10 key tokens, two LayerNorms,
    the auxiliary classifier (width -> C, no bias)."""
    return embed * width + width + 2 * width * 32 + width * width + 10 * width + 2 * 2 * width + width * classes


def test_closed_form_parameter_counts():
    c = len(NAMES)
    expected = {
        "cavpt:n_ctx=8": 8 * TEXT_WIDTH + (DEPTH - 1) * 10 * WIDTH + generator(WIDTH, EMBED, c),
        "cavpt:n_ctx=4:layers=2:vpt_tokens=3": 4 * TEXT_WIDTH + 2 * generator(WIDTH, EMBED, c),
        "cavpt:vpt_tokens=5:text=fixed": (DEPTH - 1) * 5 * WIDTH + generator(WIDTH, EMBED, c),
    }
    for method, trainable in expected.items():
        _, counts, _ = build(method)
        assert counts.trainable == counts.trainable_excl_head == trainable, method
    # ViT-B/16 (planning's meta build), 10 classes: 16 x 512 text context, 11 blocks x 10 x 768 VPT-deep prompts,
    # one generator in the last block
    b16 = count_params(BackboneSpec("clip:ViT-B-16", {}, pretrained=False), parse_method_spec("cavpt"), 10)
    assert b16.trainable == 16 * 512 + 11 * 10 * 768 + generator(768, 512, 10) == 1_144_064


def test_a_step_leaves_both_towers_bit_identical():
    model, _, keys = build("cavpt:n_ctx=8:classes=3")
    blocks = model.blocks
    tower = {k: v.clone() for k, v in blocks.text.coop.tower.state_dict().items()}
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if k.startswith(("blocks.blocks.", "patch_embed.", "norm.", "pos_embed", "cls_token"))}
    proj = blocks.proj.weight.clone()
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.train()
    loss = parse_method_spec("cavpt").training_loss(model, x, y, F.cross_entropy)  # what the runner trains with
    loss.backward()
    assert all(p.grad is None for p in blocks.text.coop.tower.parameters()), "no gradient reaches the text tower"
    make_optimizer(model, TrainConfig(optimizer="sgd", lr=1.0, weight_decay=0.0005, decay_rule="all")).step()
    assert all(torch.equal(v, tower[k]) for k, v in blocks.text.coop.tower.state_dict().items()), "text tower"
    after = model.state_dict()
    assert frozen and all(torch.equal(after[k], v) for k, v in frozen.items()), "image tower bit-identical"
    assert torch.equal(blocks.proj.weight, proj), "CLIP's projection bit-identical"
    moved = {n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])}
    assert "blocks.text.coop.ctx" in moved and "blocks.prompts.0" in moved
    assert {n for n in trained if n.startswith("blocks.generators.0.")} <= moved  # the auxiliary classifier too
    assert set(trained) <= set(keys)


def test_selected_classes_are_zero_shot_top_k_and_the_loss_is_the_official():
    model, _, _ = build("cavpt:n_ctx=4:classes=2:layers=2")
    blocks, x = model.blocks, torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        plain = model.norm(blocks.blocks(tokens))[:, 0]  # the unprompted tower: zero-shot CLIP's image feature
        zero_shot = F.normalize(blocks.proj(plain), dim=-1) @ blocks.zero_shot.T
        assert torch.equal(blocks.select(tokens), zero_shot.topk(2).indices)
    model.train()
    logits = model(x)
    selected, aux = blocks.last  # (B, K), (B, layers, K, C)
    y = selected[:, 1].clone()
    y[0] = next(c for c in range(len(NAMES)) if c not in selected[0])  # image 0: its class was not selected
    # the official term (trainers/DPT.py forward_backward): CE over every (image, layer, slot) whose class is the label
    rows = [aux[b, l, k] for b in range(6) for l in range(2) for k in range(2) if selected[b, k] == y[b]]
    expected = 0.3 * F.cross_entropy(torch.stack(rows), y[1:].repeat_interleave(2))
    torch.testing.assert_close(blocks.auxiliary_loss(y), expected, rtol=0, atol=1e-6)
    cavpt = parse_method_spec("cavpt")
    torch.testing.assert_close(cavpt.training_loss(model, x, y, F.cross_entropy),
                               F.cross_entropy(logits, y) + expected, rtol=0, atol=1e-6)  # the runner's loss
    model(x)
    assert blocks.auxiliary_loss(torch.full((6,), len(NAMES))) is None, "no image's class selected: no term"
    model.eval()
    model(x)
    assert blocks.last is None, "evaluation keeps nothing"
    torch.testing.assert_close(cavpt.training_loss(model, x, y, F.cross_entropy), F.cross_entropy(model(x), y),
                               rtol=0, atol=0)  # no class-aware term outside training


def test_options_that_do_not_fit_are_refused():
    with pytest.raises(UserError, match="cavpt.*context length 16"):
        build("cavpt")  # 16 context tokens + SOS, name, '.', EOS > the tiny tower's 16
    with pytest.raises(UserError, match="option 'layers' is 3, above 2"):
        build("cavpt:n_ctx=4:layers=3")


COUNTS = ["one object", "two objects", "three objects", "four objects", "five objects", "six objects"]


def test_runner_trains_cavpt_through_the_cli(tiny_tasks, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("\n".join([
        "name: tiny-clip", "layout: noah", "backbone: {name: 'clip:tiny', pretrained: false}",
        "train: {epochs: 2, eval_batch_size: 64}",
        f"tasks:\n  - {{name: count, classes: 6, group: structured, classnames: {COUNTS}}}"]) + "\n")
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(out),
                         "--methods", "cavpt:n_ctx=4:classes=3", "--no-samples")
    assert proc.returncode == 0, proc.stderr
    (record,) = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    assert record["status"] == "success" and record["method"]["name"] == "cavpt"
    assert record["method"]["options"]["classes"] == 3 and record["method"]["options"]["alpha"] == 0.3
    assert record["params"]["trainable"] == 4 * TEXT_WIDTH + 10 * WIDTH + generator(WIDTH, EMBED, 6)
    train = record["train"]
    assert record["recipe"]["name"] == "coop" and (train["optimizer"], train["lr"], train["momentum"]) == ("sgd", 0.01, 0.9)
    assert train["epochs"] == 2 and train["batch_size"] == 32 and train["decay_rule"] == "all"
    assert record["metrics"]["steps"] == 4 and 0 <= record["metrics"]["test_top1"] <= 1
