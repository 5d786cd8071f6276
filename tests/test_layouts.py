"""Both on-disk layouts through the loader: every VTAB-1k task and FGVC dataset, FGVC's id remapping, train + val,
the resize-then-crop sizes, and the crop/flip/centre-crop a batch applies."""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from petlbench.data.decode import load_images, stored_size
from petlbench.errors import UserError
from petlbench.data.layouts import list_images
from petlbench.suite import load_suite
from tests.fixtures import FGVC_IDS, write_fgvc_tree, write_vtab_tree

PREP = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}
FGVC_PREP = {**PREP, "crop_pct": 0.875, "train_augment": "random_crop_flip", "eval_crop": "center_crop"}
VTAB, FGVC = load_suite("vtab1k"), load_suite("fgvc")


@pytest.fixture(scope="module")
def vtab(tmp_path_factory):
    return write_vtab_tree(tmp_path_factory.mktemp("vtab"))


@pytest.fixture(scope="module")
def fgvc(tmp_path_factory):
    return write_fgvc_tree(tmp_path_factory.mktemp("fgvc"), image_size=20)


def test_every_vtab_task_loads(vtab):
    assert len(vtab) == 19 == len(VTAB.tasks)
    for task in VTAB.tasks:
        info = vtab[task.name]
        data = load_images("noah", info.dir, task, VTAB.splits["trainval"], PREP)
        assert VTAB.splits["trainval"] == ["train800val200"]
        assert data.images.dtype == torch.uint8 and data.images.shape == (6, 3, 32, 32), task.name
        expected = [label for _, label in info.splits["train800"] + info.splits["val200"]]
        assert data.labels.tolist() == expected and max(expected) < task.classes
        assert len(load_images("noah", info.dir, task, VTAB.splits["test"], PREP)) == 3


def test_fgvc_ids_remapped_by_sorting(fgvc):
    for task in FGVC.tasks:
        info = fgvc[task.name]
        ids = sorted({cid for items in info.splits.values() for _, cid in items})
        assert len(ids) == task.classes and ids != list(range(task.classes))  # the fixture is not contiguous
        items = list_images("fgvc", info.dir, task, "train")
        assert [label for _, label in items] == [ids.index(cid) for _, cid in info.splits["train"]]
        assert {label for _, label in items} == set(range(task.classes))
        assert [p for p, _ in items] == [info.image_root / rel for rel, _ in info.splits["train"]]
    cub = fgvc["CUB"].splits["train"]
    assert cub[0][1] == FGVC_IDS["CUB"](0) == 1  # 1-based in the file, 0 after remapping
    assert (fgvc["CUB"].dir / "images").is_dir() and (fgvc["StanfordDogs"].dir / "Images").is_dir()


def test_fgvc_train_and_val_concatenate(fgvc):
    task = FGVC.tasks[0]
    info = fgvc[task.name]
    assert FGVC.splits["trainval"] == ["train", "val"]
    both = load_images("fgvc", info.dir, task, FGVC.splits["trainval"], FGVC_PREP, train=True)
    train = load_images("fgvc", info.dir, task, ["train"], FGVC_PREP)
    val = load_images("fgvc", info.dir, task, ["val"], FGVC_PREP)
    assert len(both) == len(info.splits["train"]) + len(info.splits["val"]) == 202
    assert torch.equal(both.images, torch.cat([train.images, val.images]))
    assert both.labels.tolist() == train.labels.tolist() + val.labels.tolist()


def test_fgvc_stored_size_keeps_the_256_to_224_ratio(fgvc):
    assert stored_size(FGVC_PREP) == (37, 37)  # round(32 / 0.875)
    assert stored_size({**FGVC_PREP, "input_size": [3, 224, 224]}) == (256, 256)
    assert stored_size(PREP) == (32, 32)
    task = FGVC.tasks[2]
    data = load_images("fgvc", fgvc[task.name].dir, task, ["test"], FGVC_PREP)
    assert data.images.shape == (3, 3, 37, 37) and data.crop == (32, 32)


def three_bands(path: Path) -> None:
    """An 80 x 20 image: red | green | blue bands of 20, 40 and 20 px. Lossless, so colours are exact."""
    im = Image.new("RGB", (80, 20), (255, 0, 0))
    im.paste((0, 255, 0), (20, 0, 60, 20))
    im.paste((0, 0, 255), (60, 0, 80, 20))
    im.save(path)


def test_keep_aspect_resizes_shorter_side_then_centre_square(tmp_path):
    task = FGVC.tasks[2]  # OxfordFlowers: image root is the task folder
    info = write_fgvc_tree(tmp_path, tasks=[task.name])[task.name]
    rel = info.splits["test"][0][0]
    three_bands(info.image_root / rel)
    index = 0
    cropped = load_images("fgvc", info.dir, task, ["test"], FGVC_PREP).images[index].float()
    assert cropped.shape == (3, 37, 37)
    assert torch.all(cropped[1] > 200) and torch.all(cropped[0] < 50)  # only the green centre is left
    squashed = load_images("fgvc", info.dir, task, ["test"], {**FGVC_PREP, "crop_pct": 1.0}).images[index].float()
    assert squashed.shape == (3, 32, 32)
    assert squashed[0, :, 0].mean() > 200 and squashed[2, :, -1].mean() > 200  # the whole width squeezed in


def test_random_crop_flip_is_seeded_and_a_window_of_the_image(fgvc):
    task = FGVC.tasks[0]
    data = load_images("fgvc", fgvc[task.name].dir, task, ["train"], FGVC_PREP, train=True)
    assert data.augment == "random_crop_flip"
    idx = torch.arange(40)
    x1, y1 = data.batch(idx, torch.Generator().manual_seed(3))
    x2, _ = data.batch(idx, torch.Generator().manual_seed(3))
    x3, _ = data.batch(idx, torch.Generator().manual_seed(4))
    assert x1.shape == (40, 3, 32, 32) and torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert torch.equal(y1, data.labels[idx])
    pixels = (x1 * data.std + data.mean) * 255  # back to the stored uint8 scale
    for i in range(5):
        windows = [data.images[i, :, t:t + 32, l:l + 32].float() for t, l in itertools.product(range(6), range(6))]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.allclose(pixels[i], w, atol=1e-3) for w in windows), i


def test_eval_is_a_centre_crop(fgvc):
    task = FGVC.tasks[1]
    data = load_images("fgvc", fgvc[task.name].dir, task, ["val"], FGVC_PREP, train=False)
    assert data.augment == "none"
    x, _ = data.batch(torch.arange(len(data)))
    centre = data.images[:, :, 2:34, 2:34].float() / 255  # (37 - 32) // 2 = 2
    assert torch.allclose(x, (centre - data.mean) / data.std, atol=1e-6)


def test_symlinked_image_folder_is_accepted_but_dotdot_is_not(tmp_path):
    info = write_vtab_tree(tmp_path / "data", tasks=["kitti"])["kitti"]
    task = next(t for t in VTAB.tasks if t.name == "kitti")
    elsewhere = tmp_path / "other_disk" / "images"
    elsewhere.parent.mkdir()
    shutil.move(info.dir / "images", elsewhere)
    (info.dir / "images").symlink_to(elsewhere, target_is_directory=True)
    assert load_images("noah", info.dir, task, ["test"], PREP).images.shape == (3, 3, 32, 32)
    (info.dir / "test.txt").write_text("../other_disk/images/test/000000.jpg 0\n")
    with pytest.raises(UserError, match="escapes the task folder"):
        list_images("noah", info.dir, task, "test")


def test_fgvc_json_with_utf8_bom_is_accepted(tmp_path):
    task = FGVC.tasks[2]
    info = write_fgvc_tree(tmp_path, tasks=[task.name])[task.name]
    for name in ("train.json", "val.json", "test.json"):
        (info.dir / name).write_bytes(b"\xef\xbb\xbf" + (info.dir / name).read_bytes())
    items = list_images("fgvc", info.dir, task, "test")
    assert [p for p, _ in items] == [info.image_root / rel for rel, _ in info.splits["test"]]


def test_fgvc_json_not_utf8_names_file_and_line(tmp_path):
    task = FGVC.tasks[2]
    info = write_fgvc_tree(tmp_path, tasks=[task.name])[task.name]
    bad = info.dir / "val.json"
    bad.write_bytes(b'{\n  "a.jpg": 1,\n  "caf\xe9.jpg": 2\n}\n')
    with pytest.raises(UserError) as err:
        list_images("fgvc", info.dir, task, "test")  # every split file is read for the class ids
    msg = str(err.value)
    assert msg.startswith(f"{bad}:3: ") and "UTF-8" in msg and "\n" not in msg, msg


def test_other_json_in_an_fgvc_task_folder_is_not_read(tmp_path, capsys):
    """A macOS `._train.json` (AppleDouble: binary) and a `classes.json` ({name: id}) beside the split files are
    not split files: labels stay as they were and data check finds nothing wrong (fault 12)."""
    from petlbench.cli import main
    info = write_fgvc_tree(tmp_path / "fgvc", ["OxfordFlowers"])["OxfordFlowers"]
    task = FGVC.select(["OxfordFlowers"])[0]
    before = {split: list_images("fgvc", info.dir, task, split) for split in ("train", "val", "test")}
    (info.dir / "._train.json").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe")
    (info.dir / "classes.json").write_text('{"pink primrose": 1000, "globe thistle": 1001}')
    for split, items in before.items():
        assert list_images("fgvc", info.dir, task, split) == items
        assert list_images("fgvc", info.dir, task, split, FGVC.split_names()) == items
    assert main(["data", "check", "--suite", "fgvc", "--data-root", str(tmp_path / "fgvc"),
                 "--tasks", "OxfordFlowers"]) == 0, capsys.readouterr().out
