"""CLIP backbones through open_clip (petlbench.clip): the image tower as a timm ViT gives open_clip's own image
features, the zero-shot head open_clip's own zero-shot logits, and the runner runs `zeroshot` and vision methods on
a tiny random CLIP from a local checkpoint; bad input is one line."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from petlbench.backbone import BackboneSpec
from petlbench.backbones import family_of
from petlbench.clip import CONFIG_DIR, create
from petlbench.params import build_model, count_params
from petlbench.registry import parse_method_spec
from tests.conftest import assert_one_line_error, petlbench_cli

NAMES = ["red triangle", "blue circle", "green square"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """open_clip's tiny CLIP (petlbench's config) with random weights, saved as open_clip's state dict."""
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny", pretrained=None).eval()
    with torch.no_grad():  # off the zero/identity inits, so a wrong mapping cannot hide
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("clip") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_image_tower_is_open_clips(tiny_clip):
    reference, path = tiny_clip
    model = create(BackboneSpec("clip:tiny", {"head": "zeroshot"}, checkpoint=str(path)), 3, NAMES, TEMPLATES).eval()
    assert family_of(model) == "vit", "vision methods read it as timm's ViT"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.head.proj(pooled), reference.encode_image(x), rtol=0, atol=1e-5)
        weights = open_clip.build_zero_shot_classifier(reference, open_clip.get_tokenizer("tiny"), NAMES, TEMPLATES,
                                                       device="cpu")
        expected = reference.logit_scale.exp() * reference.encode_image(x, normalize=True) @ weights
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-4)  # logit scale 100 x 1e-6


def test_zeroshot_trains_nothing_and_keeps_the_text_tower_out(tiny_clip):
    _, path = tiny_clip
    spec = BackboneSpec("clip:tiny", {}, checkpoint=str(path))
    model, counts, task_keys = build_model(spec, parse_method_spec("zeroshot"), 3, seed=0,
                                           classnames=NAMES, templates=TEMPLATES)
    assert counts.trainable == 0 and not any(p.requires_grad for p in model.parameters())
    text = set(map(id, model.clip.tower.parameters()))
    assert not text & set(map(id, model.parameters())), "zero-shot reads the text tower once, at build"
    linear = count_params(spec, parse_method_spec("linear"), 3)
    assert linear.head == 48 * 3 + 3 and linear.trainable == linear.head  # timm's fresh head on the 48-wide token
    zs_head = count_params(BackboneSpec("clip:tiny", {"head": "zeroshot"}, checkpoint=str(path)),
                           parse_method_spec("linear"), 3)
    assert zs_head.head == 3 * 32, "the zero-shot head trains its class embeddings only, not CLIP's projection"
    assert zs_head.backbone == linear.backbone + 48 * 32, "CLIP's projection counts as backbone"


COUNTS = ["one object", "two objects", "three objects", "four objects", "five objects", "six objects"]


def suite_file(folder, names=True):
    from tests.conftest import write_tiny_suite
    folder.mkdir(parents=True, exist_ok=True)
    path = write_tiny_suite(folder / "suite.yaml", {"count": 6}, epochs=1)
    if names:
        path.write_text(path.read_text().replace("group: structured}", f"group: structured, classnames: {COUNTS}}}"))
    return path


def test_runner_runs_zeroshot_and_a_vision_method(tiny_clip, tiny_tasks, tmp_path):
    _, path = tiny_clip
    suite = suite_file(tmp_path)
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(out),
                         "--methods", "zeroshot,bitfit", "--backbone", "clip:tiny", "--checkpoint", str(path),
                         "--backbone-args", "head=zeroshot", "--no-samples")
    assert proc.returncode == 0, proc.stderr
    records = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    by = {r["method"]["name"]: r for r in records}
    assert set(by) == {"zeroshot", "bitfit"} and all(r["status"] == "success" for r in records)
    assert by["zeroshot"]["params"]["trainable"] == 0 and by["zeroshot"]["metrics"]["epochs"] == 0
    assert by["zeroshot"]["train"]["epochs"] == 0
    assert by["bitfit"]["params"]["trainable"] > 3 * 32
    assert by["zeroshot"]["text"] == {"classnames": COUNTS, "templates": ["a photo of a {}."],
                                      "source": f"{suite}: key 'tasks[0].classnames'"}  # where the names came from
    assert by["bitfit"]["backbone"]["args"] == {"head": "zeroshot"}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    for r in records:  # the recipes' ImageNet mean/std belong to their papers' ViTs: CLIP keeps its own
        prep = r["data"]["preprocessing"]
        assert prep["mean"] == list(OPENAI_DATASET_MEAN) and prep["std"] == list(OPENAI_DATASET_STD), prep
    assert 0 <= by["zeroshot"]["metrics"]["test_top1"] <= 1


def test_bad_clip_input_is_one_line(tiny_tasks, tmp_path):
    suite = suite_file(tmp_path)
    common = ["run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(tmp_path / "r")]
    assert_one_line_error(petlbench_cli(*common, "--methods", "zeroshot"), "zeroshot", "CLIP backbone")
    assert_one_line_error(petlbench_cli(*common, "--methods", "linear", "--backbone", "clip:ViT-B-61"),
                          "ViT-B-61", "close names")
    assert_one_line_error(petlbench_cli(*common, "--methods", "linear", "--backbone", "clip:ViT-B-16"),
                          "pretrained=TAG", "openai")
    assert_one_line_error(petlbench_cli(*common, "--methods", "linear", "--backbone", "clip:tiny",
                                        "--random-init", "--backbone-args", "head=text"), "head='text'", "zeroshot")
    nameless = ["run", "--suite", str(suite_file(tmp_path / "nameless", names=False)), "--data-root", str(tiny_tasks),
                "--out", str(tmp_path / "r"), "--backbone", "clip:tiny", "--random-init"]
    assert_one_line_error(petlbench_cli(*nameless, "--methods", "zeroshot"), "count", "no class names")
    assert petlbench_cli(*nameless, "--methods", "linear").returncode == 0, "a linear head reads no names"
