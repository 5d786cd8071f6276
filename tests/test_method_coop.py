"""CoOp and CoCoOp (methods/coop.py, methods/cocoop.py) on a tiny random open_clip CLIP: only the context (and
CoCoOp's meta-net) trains, the text tower stays bit-identical; closed-form parameter counts; CoOp's context set to
"a photo of a" gives the zero-shot classifier's logits; CoCoOp with a silent meta-net is CoOp; the runner trains
both through the CLI under CoOp's recipe. (The comparison with the official code is a scratch script: README.)"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.params import build_model, count_params
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.textheads import TextTower
from tests.conftest import assert_one_line_error, petlbench_cli

NAMES = ["red triangle", "blue circle", "green square", "dog", "yellow star"]
TINY = BackboneSpec("clip:tiny", {}, pretrained=False)  # text width 48, embed 32, context length 16
WIDTH, EMBED = 48, 32


def build(method: str, names=NAMES, templates=None, seed=0):
    torch.manual_seed(0)
    model, counts, keys = build_model(TINY, parse_method_spec(method), len(names), seed=seed, classnames=names,
                                      templates=templates)
    return model.eval(), counts, keys


@pytest.mark.parametrize("method", ["coop:n_ctx=8", "coop:n_ctx=6:csc=true:position=middle", "cocoop"])
def test_a_step_moves_the_context_only(method):
    model, _, _ = build(method)
    head = model.head
    tower = {k: v.clone() for k, v in head.tower.state_dict().items()}
    proj, image_side = head.proj.weight.clone(), {k: v.clone() for k, v in model.state_dict().items()
                                                 if not k.startswith("head.")}
    ctx = head.ctx.detach().clone()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        before = head.text_features(head.ctx)
    model.train()
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in head.tower.parameters()), "no gradient reaches the frozen text tower"
    make_optimizer(model, TrainConfig(optimizer="sgd", lr=1.0, weight_decay=0.0005, decay_rule="all")).step()
    assert all(torch.equal(v, tower[k]) for k, v in head.tower.state_dict().items()), "text tower bit-identical"
    assert torch.equal(head.proj.weight, proj), "CLIP's projection bit-identical"
    assert all(torch.equal(v, image_side[k]) for k, v in model.state_dict().items() if k in image_side)
    assert not torch.equal(head.ctx, ctx), "the context moved"
    with torch.no_grad():
        after = head.text_features(head.ctx)
        head.ctx.copy_(ctx)
        assert torch.equal(head.text_features(head.ctx), before), "the text features change through the context only"
    assert (after - before).abs().max() > 1e-4


def test_closed_form_parameter_counts():
    c = len(NAMES)
    hidden = EMBED // 16
    meta_net = EMBED * hidden + hidden + hidden * WIDTH + WIDTH
    expected = {"coop:n_ctx=8": 8 * WIDTH, "coop:n_ctx=8:csc=true": 8 * WIDTH * c,
                "coop:n_ctx=4:init=a photo of a": 4 * WIDTH, "cocoop": 4 * WIDTH + meta_net,
                "cocoop:n_ctx=8:init=": 8 * WIDTH + meta_net}
    for method, trainable in expected.items():
        _, counts, keys = build(method)
        assert counts.trainable == counts.trainable_excl_head == trainable and counts.head == 0, method  # all method
        assert set(keys) >= {"head.ctx"} and not any(k.startswith("head.tower.") for k in keys)
    # on ViT-B/16 (planning's meta-device build: no weights): the papers' figures
    b16 = BackboneSpec("clip:ViT-B-16", {}, pretrained=False)
    assert count_params(b16, parse_method_spec("coop"), 10).trainable == 16 * 512 == 8192
    assert count_params(b16, parse_method_spec("coop:csc=true"), 10).trainable == 16 * 512 * 10
    cocoop = count_params(b16, parse_method_spec("cocoop"), 10)
    assert cocoop.trainable == 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512) == 35360
    with torch.device("meta"):
        clip = open_clip.CLIP(**{k: v for k, v in open_clip.get_model_config("ViT-B-16").items()})
    text_tower = sum(p.numel() for p in TextTower(clip).parameters())
    image_side = count_params(BackboneSpec("clip:ViT-B-16", {"head": "zeroshot"}, pretrained=False),
                              parse_method_spec("linear"), 10).backbone  # the image tower and CLIP's projection
    assert cocoop.backbone == image_side + text_tower, "the text tower and CLIP's projection count as backbone"


def test_phrase_context_with_one_template_is_zero_shot():
    x = torch.randn(6, 3, 32, 32)
    coop, _, _ = build("coop:n_ctx=4:init=a photo of a", templates=["a photo of a {}."])
    zeroshot, _, _ = build("zeroshot", templates=["a photo of a {}."])
    with torch.no_grad():
        torch.testing.assert_close(coop.head.text_features(coop.head.ctx), zeroshot.head.classes.weight,
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(coop(x), zeroshot(x), rtol=0, atol=1e-5)  # logit scale 100 x 1e-7


def test_cocoop_without_its_meta_net_is_coop():
    x = torch.randn(3, 3, 32, 32)
    cocoop, _, _ = build("cocoop")
    coop, _, _ = build("coop:n_ctx=4:init=a photo of a")
    with torch.no_grad():
        torch.testing.assert_close(cocoop.head.ctx, coop.head.ctx, rtol=0, atol=0)
        cocoop.head.meta_net[2].weight.zero_(), cocoop.head.meta_net[2].bias.zero_()
        torch.testing.assert_close(cocoop(x), coop(x), rtol=0, atol=1e-5)
        cocoop.head.meta_net[2].bias.normal_()  # one bias for every image: still one prompt set for all
        cocoop.head.meta_net[2].weight.normal_()  # now each image has its own prompts
        cocoop.head.meta_net[0].bias.fill_(1.0)  # its 2 hidden units alive for every (unit-norm) image feature
        per_image = cocoop.head.text_features((cocoop.head.ctx + cocoop.head.meta_net(
            cocoop.head.image_features(cocoop.forward_head(cocoop.forward_features(x), pre_logits=True))
        )[:, None])[:, None])
    assert per_image.shape == (3, len(NAMES), EMBED) and (per_image[0] - per_image[1]).abs().max() > 1e-4


def test_prompts_that_do_not_fit_are_refused():
    with pytest.raises(UserError, match="'a photo of a' is 4 tokens but n_ctx is 16"):
        build("coop:init=a photo of a")
    with pytest.raises(UserError, match="context length 16"):
        build("coop")  # 16 context tokens + SOS, name, '.', EOS > the tiny tower's 16
    with pytest.raises(UserError, match="'a very long class name of many words'"):
        build("coop:n_ctx=8", names=["a very long class name of many words", "b"])


COUNTS = ["one object", "two objects", "three objects", "four objects", "five objects", "six objects"]


def test_runner_trains_coop_and_cocoop_on_coops_recipe(tiny_tasks, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("\n".join([
        "name: tiny-clip", "layout: noah", "backbone: {name: 'clip:tiny', pretrained: false}",
        "train: {epochs: 1, eval_batch_size: 64}",
        f"tasks:\n  - {{name: count, classes: 6, group: structured, classnames: {COUNTS}}}"]) + "\n")
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(out),
                         "--methods", "coop:n_ctx=4,cocoop", "--no-samples")
    assert proc.returncode == 0, proc.stderr
    by = {r["method"]["name"]: r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r}
    assert set(by) == {"coop", "cocoop"} and all(r["status"] == "success" for r in by.values())
    hidden = EMBED // 16
    assert by["coop"]["params"]["trainable"] == 4 * WIDTH
    assert by["cocoop"]["params"]["trainable"] == 4 * WIDTH + EMBED * hidden + hidden + hidden * WIDTH + WIDTH
    for name, batch in (("coop", 32), ("cocoop", 1)):
        record = by[name]
        assert record["recipe"]["name"] == "coop"
        train = record["train"]
        assert (train["optimizer"], train["lr"], train["weight_decay"], train["momentum"]) == ("sgd", 0.002, 5e-4, 0.9)
        assert train["batch_size"] == batch and train["decay_rule"] == "all" and train["epochs"] == 1
        where = record["recipe"]["train_from"]  # the layer each setting came from
        assert (where["epochs"], where["lr"]) == ("suite", "recipe coop")
        assert where["batch_size"] == ("recipe coop" if name == "coop" else "method cocoop")
        assert record["text"]["classnames"] == COUNTS
        assert 0 <= record["metrics"]["test_top1"] <= 1
    assert "CoCoOp" in by["cocoop"]["recipe"]["defaults"]


def test_bad_options_are_one_line(tiny_tasks, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: t\nlayout: noah\nbackbone: {name: 'clip:tiny', pretrained: false}\n"
                     f"tasks:\n  - {{name: count, classes: 6, group: structured, classnames: {COUNTS}}}\n")
    common = ["run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(tmp_path / "r")]
    assert_one_line_error(petlbench_cli(*common, "--methods", "coop:n_ctx=5:init=a photo of a"), "4 tokens", "n_ctx")
    assert_one_line_error(petlbench_cli(*common, "--methods", "coop:position=top"), "position", "middle")
