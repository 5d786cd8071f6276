"""The CLIP demo: `prepare: demo-clip` writes its tasks in the NOAH layout and a tiny CLIP pre-trained on captioned
coloured shapes, which open_clip loads from the shipped config and which classifies colour x shape combinations
it never saw captioned far above chance (zero-shot, from the suite's class names and templates)."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from petlbench.backbone import file_sha256
from petlbench.data import demo_clip
from petlbench.clip import CONFIG_DIR
from petlbench.engine.demo_clip import prepare, to_input
from petlbench.suite import load_suite

SUITE = load_suite("demo-clip")


@pytest.fixture(scope="session")
def clip_root(tmp_path_factory) -> Path:
    """The suite's data and pre-trained tiny CLIP, made once (about 75 s of CPU)."""
    root = tmp_path_factory.mktemp("demo-clip-data")
    prepare(root, SUITE, log=lambda line: None)
    return root


@pytest.fixture(scope="session")
def clip_model(clip_root):
    """open_clip's own model built from the shipped config, the checkpoint loaded by open_clip (strict)."""
    open_clip.add_model_config(CONFIG_DIR)
    model = open_clip.create_model("demo-tiny", pretrained=str(clip_root / SUITE.backbone["checkpoint"]))
    return model.eval()


def split_rows(root: Path, task: str, split: str) -> list[tuple[str, int]]:
    return [(p, int(label)) for p, label in (line.split() for line in (root / task / f"{split}.txt").read_text().splitlines())]


def test_prepare_writes_the_noah_layout_and_a_checkpoint_with_its_sha256(clip_root):
    for task in SUITE.tasks:
        counts = {}
        for split in ("train800", "val200", "train800val200", "test"):
            rows = split_rows(clip_root, task.name, split)
            counts[split] = len(rows)
            assert all(p.startswith(f"images/{split}/") and (clip_root / task.name / p).is_file() for p, _ in rows)
            assert {label for _, label in rows} <= set(range(task.classes))
        assert counts == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 600}
        with Image.open(clip_root / task.name / split_rows(clip_root, task.name, "test")[0][0]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
    test_labels = {label for _, label in split_rows(clip_root, "combos", "test")}
    assert {demo_clip.COMBOS.index(c) for c in demo_clip.HELD_OUT} <= test_labels  # held-out classes are tested
    marker = json.loads((clip_root / "demo-clip.json").read_text())
    ckpt = clip_root / SUITE.backbone["checkpoint"]
    assert marker["version"] == demo_clip.VERSION and marker["pretrain"]["sha256"] == file_sha256(ckpt)
    assert marker["pretrain"]["loss_per_epoch"][-1] < marker["pretrain"]["loss_per_epoch"][0]
    before = ckpt.stat().st_mtime_ns
    prepare(clip_root, SUITE, log=lambda line: pytest.fail(f"prepared again: {line}"))  # once only
    assert ckpt.stat().st_mtime_ns == before


def test_open_clip_loads_every_tensor_of_the_checkpoint(clip_root, clip_model):
    saved = load_file(clip_root / SUITE.backbone["checkpoint"])
    state = clip_model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    visual = clip_model.visual  # a standard open_clip ViT (class token pooled, ln_pre, no attentional pool)
    assert (type(visual).__name__, visual.pool_type, visual.attn_pool) == ("VisionTransformer", "tok", None)
    assert clip_model.token_embedding.num_embeddings == 49408  # open_clip's own tokenizer and vocabulary


@pytest.mark.parametrize("task_name, least", [("combos", 0.5), ("colours", 0.9), ("shapes", 0.5)])
def test_zero_shot_is_far_above_chance(clip_root, clip_model, task_name, least):
    (task,) = SUITE.select([task_name])
    rows = split_rows(clip_root, task.name, "test")
    images = to_input([Image.open(clip_root / task.name / p) for p, _ in rows], clip_model)
    labels = torch.tensor([label for _, label in rows])
    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            clip_model, open_clip.get_tokenizer("demo-tiny"), task.classnames, task.templates,
            num_classes_per_batch=None, device="cpu", use_tqdm=False)
        right = (F.normalize(clip_model.encode_image(images), dim=-1) @ classifier).argmax(1) == labels
    assert right.float().mean() > least  # chance: 1/36 and 1/6
    if task_name == "combos":  # combinations that pre-training never showed, classified among all 36
        held = torch.tensor([demo_clip.COMBOS[i] in demo_clip.HELD_OUT for i in labels.tolist()])
        assert held.sum() >= 60 and right[held].float().mean() > 0.3


def test_pretraining_never_captions_a_held_out_combination():
    import numpy as np
    rng = np.random.default_rng(0)
    captions = [demo_clip.caption_sample(rng)[1] for _ in range(1000)]
    for colour, shape in demo_clip.HELD_OUT:
        assert not any(colour in c and shape in c for c in captions)
    for word in (*demo_clip.COLOUR_NAMES, *demo_clip.SHAPES):  # every word alone is captioned
        assert any(word in c for c in captions)


def test_suite_names_every_class_as_the_generator_labels_it():
    assert SUITE.prepare == "demo-clip" and SUITE.backbone["name"] == "clip:demo-tiny"
    for task in SUITE.tasks:
        assert task.classnames == [name for name, _ in demo_clip.task_classes(task.name)]
        assert task.templates and all("{}" in t for t in task.templates)
