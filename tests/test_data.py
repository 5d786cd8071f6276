"""NOAH-layout data loading, its error messages, and local backbone checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from petlbench.backbone import BackboneSpec, create_backbone, file_sha256, read_state_dict
from petlbench.data.decode import TensorData, load_images
from petlbench.errors import UserError
from petlbench.data.layouts import read_noah_split
from petlbench.specs import Task
from tests.conftest import TINY_ARGS

PREP = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
COLOURS = [(200, 40, 120), (10, 230, 90), (128, 128, 128), (250, 250, 5)]
LABELS = [2, 0, 1, 2]
JPEG_TOLERANCE = 6  # solid colours survive JPEG almost exactly


def load_split(task_dir: Path, split: str, classes: int, prep: dict) -> TensorData:
    """One NOAH split through the loader the runner uses (no on-disk cache)."""
    return load_images("noah", task_dir, Task(task_dir.name, classes), [split], prep)


def make_task(root: Path, split: str = "train800", name: str = "task",
              colours=COLOURS, labels=LABELS) -> Path:
    """A NOAH-layout task: images/<split>/000000.jpg ... and <split>.txt listing them."""
    task = root / name
    folder = task / "images" / split
    folder.mkdir(parents=True)
    lines = []
    for i, (colour, label) in enumerate(zip(colours, labels)):
        size = (20 + 4 * i, 24)  # neither square nor the target size
        Image.new("RGB", size, colour).save(folder / f"{i:06d}.jpg", quality=95)
        lines.append(f"images/{split}/{i:06d}.jpg {label}")
    (task / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return task


def write_split(task: Path, split: str, text: str) -> Path:
    path = task / f"{split}.txt"
    path.write_text(text)
    return path


def split_error(task: Path, text: str) -> tuple[Path, str]:
    """Write `text` as the task's test split; return its path and the UserError message that loading it gives."""
    split = write_split(task, "test", text)
    with pytest.raises(UserError) as err:
        load_split(task, "test", 3, PREP)
    return split, str(err.value)


# --------------------------------------------------------------------------------------------------
# loading


def test_load_split_decodes_and_resizes(tmp_path):
    task = make_task(tmp_path)
    data = load_split(task, "train800", 3, PREP)
    assert isinstance(data, TensorData) and len(data) == 4
    assert data.images.dtype == torch.uint8 and data.images.shape == (4, 3, 16, 16)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == LABELS
    for i, colour in enumerate(COLOURS):  # order kept, colours kept, channels first
        mean_rgb = data.images[i].float().mean(dim=(1, 2))
        assert torch.allclose(mean_rgb, torch.tensor(colour, dtype=torch.float32), atol=JPEG_TOLERANCE), (i, mean_rgb)
    assert data.mean.shape == (1, 3, 1, 1) and data.std.shape == (1, 3, 1, 1)


def test_load_split_non_square_size_and_grayscale(tmp_path):
    task = make_task(tmp_path)
    Image.new("L", (9, 30), 77).save(task / "images" / "train800" / "gray.jpg")
    write_split(task, "test", "images/train800/gray.jpg 1\n\nimages/train800/000001.jpg 0\n")  # blank line skipped
    prep = dict(PREP, input_size=[3, 12, 20])
    data = load_split(task, "test", 2, prep)
    assert data.images.shape == (2, 3, 12, 20)  # H x W as asked
    assert data.labels.tolist() == [1, 0]
    gray = data.images[0].float()
    assert torch.allclose(gray.mean(dim=(1, 2)), torch.full((3,), 77.0), atol=JPEG_TOLERANCE)


def test_path_with_spaces(tmp_path):
    task = make_task(tmp_path)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(task / "images" / "my photo.jpg")
    write_split(task, "val200", "images/my photo.jpg 4\n")
    items = read_noah_split(task, "val200", 5)
    assert items == [(task / "images" / "my photo.jpg", 4)]


def test_batch_normalises(tmp_path):
    task = make_task(tmp_path)
    data = load_split(task, "train800", 3, dict(PREP, mean=[0.5, 0.25, 0.75], std=[0.5, 0.2, 0.25]))
    before = data.images.clone()
    x, y = data.batch(torch.tensor([3, 1]))
    assert x.dtype == torch.float32 and x.shape == (2, 3, 16, 16)
    assert y.tolist() == [LABELS[3], LABELS[1]]
    # one value by hand: image 3, green channel, pixel (5, 7)
    v = int(data.images[3, 1, 5, 7])
    assert x[0, 1, 5, 7].item() == pytest.approx((v / 255 - 0.25) / 0.2, abs=1e-6)
    # image 1, blue channel, pixel (0, 0)
    v = int(data.images[1, 2, 0, 0])
    assert x[1, 2, 0, 0].item() == pytest.approx((v / 255 - 0.75) / 0.25, abs=1e-6)
    assert torch.equal(data.images, before)  # the stored uint8 images are untouched


# --------------------------------------------------------------------------------------------------
# errors name the file (and line) and what was expected


def test_missing_task_folder(tmp_path):
    with pytest.raises(UserError) as err:
        load_split(tmp_path / "nosuch", "train800", 3, PREP)
    assert str(tmp_path / "nosuch") in str(err.value) and "task folder not found" in str(err.value)


def test_missing_split_file(tmp_path):
    task = make_task(tmp_path)
    with pytest.raises(UserError) as err:
        load_split(task, "test", 3, PREP)
    assert str(task / "test.txt") in str(err.value) and "split file not found" in str(err.value)


@pytest.mark.parametrize("label", [3, 7, -1])
def test_label_out_of_range(tmp_path, label):
    task = make_task(tmp_path)
    split, msg = split_error(task, f"images/train800/000000.jpg 0\nimages/train800/000001.jpg {label}\n")
    assert msg.startswith(f"{split}:2: ") and f"label {label}" in msg and "[0, 3)" in msg


@pytest.mark.parametrize("line", ["images/train800/000000.jpg", "images/train800/000000.jpg cat",
                                  "images/train800/000000.jpg 1.0", "3"])
def test_malformed_line(tmp_path, line):
    task = make_task(tmp_path)
    split, msg = split_error(task, f"images/train800/000001.jpg 0\n\n{line}\n")
    assert msg.startswith(f"{split}:3: ") and "expected '<relative image path> <int label>'" in msg
    assert repr(line) in msg


@pytest.mark.parametrize("label", ["--2", "\u00b2", "\u0663", "+1", "1_0", "\uff11"],
                         ids=["double-minus", "superscript", "arabic-indic", "plus", "underscore", "fullwidth"])
def test_label_must_be_a_plain_ascii_integer(tmp_path, label):
    """str.isdigit and int() accept superscripts and other scripts' digits; a label is ASCII digits, one minus."""
    task = make_task(tmp_path)
    split, msg = split_error(task, f"images/train800/000001.jpg 0\nimages/train800/000002.jpg {label}\n")
    assert msg.startswith(f"{split}:2: ") and "expected '<relative image path> <int label>'" in msg, msg
    assert "\n" not in msg


def test_non_utf8_split_file_names_file_and_line(tmp_path):
    task = make_task(tmp_path)
    split = task / "test.txt"
    split.write_bytes(b"images/train800/000000.jpg 0\nimages/train800/000001.jpg 1\nimages/caf\xe9.jpg 2\n")
    with pytest.raises(UserError) as err:
        load_split(task, "test", 3, PREP)
    msg = str(err.value)
    assert msg.startswith(f"{split}:3: ") and "UTF-8" in msg and "\n" not in msg, msg


def test_utf8_bom_at_the_start_is_accepted(tmp_path):
    task = make_task(tmp_path)
    write_split(task, "test", "\ufeffimages/train800/000002.jpg 1\nimages/train800/000000.jpg 0\n")
    (task / "test.txt").write_bytes((task / "test.txt").read_text().encode("utf-8"))
    assert (task / "test.txt").read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_noah_split(task, "test", 3) == [(task / "images/train800/000002.jpg", 1),
                                                (task / "images/train800/000000.jpg", 0)]


@pytest.mark.parametrize("rel", ["../../etc/passwd", "/etc/passwd", "images/../../task2/x.jpg"])
def test_path_escaping_task_folder(tmp_path, rel):
    task = make_task(tmp_path)
    make_task(tmp_path, name="task2")
    split, msg = split_error(task, f"images/train800/000001.jpg 0\n{rel} 0\n")
    assert msg.startswith(f"{split}:2: ") and repr(rel) in msg and "escapes the task folder" in msg


def test_empty_split_file(tmp_path):
    task = make_task(tmp_path)
    split, msg = split_error(task, "\n\n")
    assert str(split) in msg and "no images" in msg


def test_unreadable_image(tmp_path):
    task = make_task(tmp_path)
    bad = task / "images" / "train800" / "000002.jpg"
    bad.write_bytes(b"this is not a jpeg at all \x00\x01\x02" * 10)
    with pytest.raises(UserError) as err:
        load_split(task, "train800", 3, PREP)
    msg = str(err.value)
    assert str(bad) in msg and "unreadable image" in msg


def test_truncated_image(tmp_path):
    task = make_task(tmp_path)
    bad = task / "images" / "train800" / "000001.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError) as err:
        load_split(task, "train800", 3, PREP)
    assert str(bad) in str(err.value) and "unreadable image" in str(err.value)


def test_listed_image_missing(tmp_path):
    task = make_task(tmp_path)
    _, msg = split_error(task, "images/train800/000000.jpg 0\nimages/train800/999999.jpg 1\n")
    assert str(task / "images/train800/999999.jpg") in msg


# --------------------------------------------------------------------------------------------------
# local checkpoints

NAME = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def source_state():
    torch.manual_seed(0)
    model = create_backbone(BackboneSpec(NAME, TINY_ARGS, pretrained=False), 5)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save(state, path: Path, wrap: str | None = None) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path


def assert_backbone_loaded(model, state):
    loaded = model.state_dict()
    head = {k for k in loaded if k.startswith("head.")}
    assert head == {"head.weight", "head.bias"}
    assert loaded["head.weight"].shape == (7, TINY_ARGS["embed_dim"])  # the new model's own head
    body = [k for k in loaded if k not in head]
    assert len(body) > 20
    for k in body:
        assert torch.equal(loaded[k], state[k]), k


@pytest.mark.parametrize("filename,wrap", [("w.safetensors", None), ("w.pt", None), ("w.pth", "state_dict"),
                                          ("w.bin", "model")])
def test_checkpoint_loads_backbone(tmp_path, source_state, filename, wrap):
    path = save(source_state, tmp_path / filename, wrap)
    torch.manual_seed(1)
    fresh = create_backbone(BackboneSpec(NAME, TINY_ARGS, pretrained=False), 7).state_dict()
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], source_state["blocks.0.attn.qkv.weight"])
    torch.manual_seed(1)
    # pretrained defaults to True: with a checkpoint nothing may be fetched (there is no network here)
    spec = BackboneSpec(NAME, TINY_ARGS, checkpoint=str(path), checkpoint_sha256=file_sha256(path))
    assert spec.weights == f"checkpoint sha256:{file_sha256(path)[:16]}"  # identity by content, not path
    model = create_backbone(spec, 7)
    assert_backbone_loaded(model, source_state)


def test_checkpoint_without_head_loads(tmp_path, source_state):
    path = save({k: v for k, v in source_state.items() if not k.startswith("head.")}, tmp_path / "body.safetensors")
    model = create_backbone(BackboneSpec(NAME, TINY_ARGS, checkpoint=str(path)), 7)
    assert_backbone_loaded(model, source_state)


class Payload:
    """An arbitrary pickled object: loading it must not run its code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("code ran while loading a checkpoint")
        self.__dict__.update(state)


def test_pickled_object_is_refused(tmp_path, source_state):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(str(marker)), **source_state}, path)
    with pytest.raises(UserError) as err:
        create_backbone(BackboneSpec(NAME, TINY_ARGS, checkpoint=str(path)), 7)
    msg = str(err.value)
    assert str(path) in msg and "pickled objects" in msg
    assert not marker.exists()
    with pytest.raises(UserError):
        read_state_dict(path)
    assert not marker.exists()


def test_checkpoint_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "state dict" in str(err.value)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(UserError) as err:
        create_backbone(BackboneSpec(NAME, TINY_ARGS, checkpoint=str(path)), 7)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("other", [{"depth": 3}, {"depth": 1}, {"embed_dim": 96}], ids=["deeper", "shallower", "wider"])
@pytest.mark.parametrize("filename", ["w.safetensors", "w.pt"])
def test_checkpoint_of_other_architecture(tmp_path, source_state, other, filename):
    path = save(source_state, tmp_path / filename)
    with pytest.raises(UserError) as err:
        create_backbone(BackboneSpec(NAME, {**TINY_ARGS, **other}, checkpoint=str(path)), 7)
    msg = str(err.value)
    assert str(path) in msg and "--backbone-args" in msg


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(UserError) as err:
        create_backbone(BackboneSpec(NAME, TINY_ARGS, checkpoint=str(path)), 7)
    assert str(path) in str(err.value) and "not found" in str(err.value)
