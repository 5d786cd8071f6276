"""CLIP's ResNet towers (petlbench.clip_resnet): the image tower as a timm ResNet gives open_clip's own image
features and zero-shot logits, the methods that need a ViT's tokens (or a resizable input) are refused at planning in
one line, the runner runs text and ResNet methods on a tiny CLIP-RN, and a `clip:RN50` run finds its published
few-shot rows."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from petlbench.backbone import BackboneSpec
from petlbench.backbones import anatomy, family_of
from petlbench.clip import CONFIG_DIR, create
from petlbench.clip_resnet import ClipResNet, resnet_tower
from petlbench.params import build_model, count_params
from petlbench.registry import parse_method_spec
from tests.conftest import assert_one_line_error, petlbench_cli
from tests.test_clip import COUNTS, suite_file
from tests.test_shots import fewshot_record, published_table

NAMES = ["red triangle", "blue circle", "green square"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def tiny_rn(tmp_path_factory):
    """open_clip's tiny CLIP-RN (petlbench's tiny-rn.json), random weights moved off their inits (the zero last-BN
    scales, unit BatchNorm statistics) so a wrong mapping cannot hide, saved as open_clip's state dict."""
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-rn", pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("cliprn") / "tiny-rn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_image_features_and_zero_shot_logits_are_open_clips(tiny_rn):
    reference, path = tiny_rn
    model = create(BackboneSpec("clip:tiny-rn", {"head": "zeroshot"}, checkpoint=str(path)), 3, NAMES,
                   TEMPLATES).eval()
    assert isinstance(model, ClipResNet) and family_of(model) == "resnet", "ResNet methods read it as timm's ResNet"
    assert type(model.global_pool) is type(reference.visual.attnpool), "CLIP's attention pool is the pooling"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(pooled, reference.encode_image(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(model.head.proj(pooled), pooled, rtol=0, atol=0)  # c_proj already projected
        weights = open_clip.build_zero_shot_classifier(reference, open_clip.get_tokenizer("tiny-rn"), NAMES,
                                                       TEMPLATES, device="cpu")
        expected = reference.logit_scale.exp() * reference.encode_image(x, normalize=True) @ weights
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)  # logit scale 100 x 1e-7


def test_rn50_maps_every_tensor_and_gives_the_same_features():
    """RN50's shape (3-4-6-3 Bottlenecks, 224 input, 32 heads): every tensor of open_clip's tower has its place."""
    from open_clip.modified_resnet import ModifiedResNet
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=[3, 4, 6, 3], output_dim=1024, heads=32, image_size=224, width=64).eval()
    with torch.no_grad():
        for name, p in visual.named_parameters():
            if name.endswith("bn3.weight"):
                p.normal_(1.0, 0.1)
    model = resnet_tower(visual, "clip:RN50").eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in visual.parameters()) == 38_316_896
    body = anatomy(model)
    assert (body.family, body.depth, body.input_size) == ("resnet", 16, (224, 224))
    assert body.extra["fixed_input"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), visual(x),
                                   rtol=0, atol=1e-6)


def test_heads_and_counts(tiny_rn):
    _, path = tiny_rn
    spec = BackboneSpec("clip:tiny-rn", {}, checkpoint=str(path))
    model, counts, _ = build_model(spec, parse_method_spec("zeroshot"), 3, seed=0, classnames=NAMES,
                                   templates=TEMPLATES)
    assert counts.trainable == 0 and model.get_classifier() is model.head
    linear = count_params(spec, parse_method_spec("linear"), 3)
    assert linear.head == 32 * 3 + 3 and linear.trainable == linear.head  # a fresh linear head on the 32-wide embedding
    visual = sum(p.numel() for n, p in open_clip.create_model("tiny-rn").visual.named_parameters())
    assert linear.backbone == visual, "the whole image tower, attention pool included, is backbone"
    zs_head = count_params(BackboneSpec("clip:tiny-rn", {"head": "zeroshot"}, checkpoint=str(path)),
                           parse_method_spec("linear"), 3)
    assert zs_head.head == 3 * 32, "the zero-shot head trains its class embeddings only"
    assert zs_head.backbone == linear.backbone, "its identity projection is a buffer: no parameter the model lacks"
    vit = count_params(BackboneSpec("clip:tiny", {"head": "zeroshot"}, pretrained=False), parse_method_spec("linear"), 3)
    vit_linear = count_params(BackboneSpec("clip:tiny", {}, pretrained=False), parse_method_spec("linear"), 3)
    assert vit.backbone > vit_linear.backbone, "a ViT tower's projection is a real parameter, counted as backbone"


def run_args(suite, tiny_tasks, out, path, *methods):
    return ["run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(out), "--methods",
            ",".join(methods), "--backbone", "clip:tiny-rn", "--checkpoint", str(path), "--no-samples"]


def test_planning_refuses_what_needs_a_vits_tokens_in_one_line(tiny_rn, tiny_tasks, tmp_path):
    _, path = tiny_rn
    suite = suite_file(tmp_path)
    for method in ("vpt_deep", "cavpt", "mvlpt", "lora"):
        assert_one_line_error(petlbench_cli(*run_args(suite, tiny_tasks, tmp_path / "r", path, method)),
                              repr(method), "clip:tiny-rn is a resnet backbone")
    line = assert_one_line_error(petlbench_cli(*run_args(suite, tiny_tasks, tmp_path / "r", path, "vpt_pad")),
                                 "vpt_pad", "attention pool")
    assert "input size" in line
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.json")), "refused before any run"


def test_runner_runs_text_and_resnet_methods(tiny_rn, tiny_tasks, tmp_path):
    _, path = tiny_rn
    out = tmp_path / "results"
    proc = petlbench_cli(*run_args(suite_file(tmp_path), tiny_tasks, out, path, "zeroshot", "coop:n_ctx=4",
                                   "conv_adapter"))
    assert proc.returncode == 0, proc.stderr
    records = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    by = {r["method"]["name"]: r for r in records}
    assert set(by) == {"zeroshot", "coop", "conv_adapter"} and all(r["status"] == "success" for r in records)
    assert by["zeroshot"]["params"]["trainable"] == 0 and by["zeroshot"]["text"]["classnames"] == COUNTS
    assert by["coop"]["params"]["trainable_excl_head"] == 4 * 48, "CoOp's context: 4 tokens of the text width"
    assert by["conv_adapter"]["params"]["trainable_excl_head"] > 0
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    for r in records:
        prep = r["data"]["preprocessing"]
        assert prep["mean"] == list(OPENAI_DATASET_MEAN) and prep["std"] == list(OPENAI_DATASET_STD), prep
        assert 0 <= r["metrics"]["test_top1"] <= 1


@pytest.mark.parametrize("args,checkpoint", [({"pretrained": "openai"}, None),
                                             ({"pretrained": "openai"}, "RN50.safetensors")])
def test_a_clip_rn50_run_finds_its_published_rows(tmp_path, args, checkpoint):
    """The record's backbone as the runner writes it (open_clip's tag, or a local file named by its tag)."""
    spec = BackboneSpec("clip:RN50", args, checkpoint=checkpoint, checkpoint_sha256="ab" * 32 if checkpoint else None)
    record = fewshot_record("textures", 0, "zeroshot", 0, 0.42, 16, spec.name, spec.args, layout="coop")
    record["backbone"]["weights"] = spec.weights
    frame, _ = published_table(tmp_path, [record])
    tip = "published: tip_adapter [tip_adapter (val_last), 16-shot]"
    assert frame.loc[tip, "textures"] == "60.9"
    assert frame.loc["published: zeroshot [tip_adapter (fixed), 0-shot]", "textures"] == "42.2"
    unnamed = {**record, "backbone": {"name": "clip:RN50", "args": {}, "weights": "checkpoint sha256:abab"}}
    frame, _ = published_table(tmp_path / "unnamed", [unnamed])
    assert not any(m.startswith("published:") for m in frame.index), "a file of unknown weights matches nothing"
