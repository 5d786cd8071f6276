"""FGVC from archives shaped like its public mirror (split files in json.zip, the datasets' own image archives),
the train/test leakage check (same file; same pixels under another name), and `data show`'s picture."""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

from petlbench.cli import main
from petlbench.data.show import class_names, show_task
from petlbench.data.fgvc import plan_files
from petlbench.data.layouts import list_images
from petlbench.suite import load_suite
from tests.conftest import assert_one_line_error
from tests.fixtures import write_fgvc_tree


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def mirror_archives(tmp_path: Path) -> dict[str, Path]:
    """VPT's split files in json.zip (a folder per dataset, VPT's names) and two image archives nested as the
    datasets' sites ship them: CUB_200_2011.tgz (CUB_200_2011/images/...) and 102flowers.tgz (images at the top)."""
    src = tmp_path / "src"
    write_fgvc_tree(src, ["CUB", "OxfordFlowers"])
    splits = tmp_path / "mirror" / "json.zip"
    splits.parent.mkdir()
    with zipfile.ZipFile(splits, "w") as zf:
        for task, folder in (("CUB", "CUB_200_2011"), ("OxfordFlowers", "OxfordFlower")):
            for name in ("train.json", "val.json", "test.json"):
                zf.write(src / task / name, f"{folder}/{name}")
    cub = tmp_path / "mirror" / "CUB_200_2011.tgz"
    with tarfile.open(cub, "w:gz") as tf:
        tf.add(src / "CUB" / "images", "CUB_200_2011/images")
        tf.addfile(tarfile.TarInfo("CUB_200_2011/README"))
    flowers = tmp_path / "mirror" / "102flowers.tgz"
    with tarfile.open(flowers, "w:gz") as tf:
        for child in sorted((src / "OxfordFlowers").iterdir()):
            if child.is_dir():
                tf.add(child, child.name)
    return {"json": splits, "CUB": cub, "OxfordFlowers": flowers}


def test_fgvc_download_from_mirror_shaped_archives(tmp_path, capsys):
    archives = mirror_archives(tmp_path)
    dest = tmp_path / "fgvc"
    args = ["data", "download", "fgvc", "--to", str(dest), "--tasks", "CUB,OxfordFlowers",
            *[a for path in archives.values() for a in ("--archive", str(path))]]
    result = cli(capsys, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 tasks ok" in result.stdout
    for task in ("CUB", "OxfordFlowers"):
        assert sorted(p.name for p in (dest / task).glob("*.json")) == ["test.json", "train.json", "val.json"]
    first = next(iter(json.loads((dest / "CUB" / "train.json").read_text())))
    assert (dest / "CUB" / "images" / first).is_file()
    assert not (dest / "CUB" / "README").exists(), "only what the layout needs is unpacked"
    assert not (dest / ".unpacked").exists(), "the staging copy is removed"

    again = cli(capsys, *args)  # resumed: only the split files unpacked again, no image moved
    assert again.returncode == 0 and again.stdout.count("unpacking ") == 1, again.stdout
    assert again.stdout.count("laid out before, kept") == 2

    run = cli(capsys, "data", "check", "--suite", "fgvc", "--data-root", str(dest), "--tasks", "CUB")
    assert run.returncode == 0, run.stdout


def test_fgvc_dataset_without_an_archive_is_named_with_its_official_source(tmp_path, capsys):
    archives = mirror_archives(tmp_path)
    result = cli(capsys, "data", "download", "fgvc", "--to", str(tmp_path / "d"), "--tasks", "CUB,StanfordDogs",
                 "--archive", str(archives["json"]), "--archive", str(archives["CUB"]))
    lines = [line for line in result.stdout.splitlines() if line.startswith("StanfordDogs: no image archive")]
    assert len(lines) == 1 and "images.tar" in lines[0] and "--archive" in lines[0]
    assert "vision.stanford.edu" in lines[0]
    assert result.returncode == 1  # the check then reports StanfordDogs as missing


def test_mirror_listing_is_matched_to_datasets():
    tasks = load_suite("fgvc").tasks
    splits, images = plan_files(["json.zip", "CUB_200_2011.tgz", "car_ims.tgz", "README.md", "nabirds.tar.gz",
                                 "OxfordFlower.zip", "misc/other.tgz"], tasks)
    assert splits == ["json.zip"]
    assert images == {"CUB": ["CUB_200_2011.tgz"], "nabirds": ["nabirds.tar.gz"],
                      "OxfordFlowers": ["OxfordFlower.zip"], "StanfordDogs": [], "StanfordCars": ["car_ims.tgz"]}


def test_fgvc_archive_escaping_the_target_is_refused(tmp_path, capsys):
    archives = mirror_archives(tmp_path)
    evil = tmp_path / "mirror" / "CUB_200_2011.tgz"
    with tarfile.open(evil, "w:gz") as tf:
        bad = tarfile.TarInfo("../../evil")
        tf.addfile(bad)
    result = cli(capsys, "data", "download", "fgvc", "--to", str(tmp_path / "d"), "--tasks", "CUB",
                 "--archive", str(archives["json"]), "--archive", str(evil))
    assert_one_line_error(result, str(evil), "../../evil", "outside")
    assert not (tmp_path / "evil").exists()


def plant(task_dir: Path) -> None:
    """One test image listed in train800 too (same file), one copied into train800 under another name."""
    test_lines = (task_dir / "test.txt").read_text().splitlines()
    same_file, copied = test_lines[0], test_lines[1]
    shutil.copyfile(task_dir / copied.split()[0], task_dir / "images" / "train800" / "copy_of_test.jpg")
    with open(task_dir / "train800.txt", "a") as f:
        f.write(f"{same_file}\nimages/train800/copy_of_test.jpg {copied.split()[1]}\n")


def test_leakage_is_reported_by_path_and_by_content(tmp_path, capsys, tiny_tasks):
    suite = ["--suite", "demo", "--data-root", str(tiny_tasks), "--tasks", "count"]
    clean = cli(capsys, "data", "check", *suite, "--strict")
    assert clean.returncode == 0 and "no train/test leakage" in clean.stdout and "leakage in" not in clean.stderr

    plant(tiny_tasks / "count")
    warned = cli(capsys, "data", "check", *suite)
    assert warned.returncode == 0, warned.stdout
    assert "count: 2 test image(s) also in training splits (1 by path, 1 by content)" in warned.stdout
    assert "copy_of_test.jpg = " in warned.stdout and str(tiny_tasks / "count/images/test/000001.jpg") in warned.stdout
    assert "petlbench: warning: train/test leakage in count" in warned.stderr
    strict = cli(capsys, "data", "check", *suite, "--strict")
    assert strict.returncode == 1 and "petlbench: error: train/test leakage in count" in strict.stderr


def test_show_writes_one_tile_per_class_and_the_counts(tmp_path, capsys, tiny_tasks):
    suite = load_suite("demo")
    (task,) = suite.select(["position"])
    shown = show_task(suite, tiny_tasks, task, tmp_path / "show")
    assert shown["tiles"] == task.classes == 9
    assert shown["images"] == {"train800": 48, "val200": 16, "test": 32}
    with Image.open(shown["png"]) as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 200

    result = cli(capsys, "data", "show", "--suite", "demo", "--data-root", str(tiny_tasks), "--out",
                 str(tmp_path / "cli"), "--tasks", "count,position")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["demo_count.png", "demo_position.png"]
    assert "position: train800 48, val200 16, test 32; classes" in result.stdout and "32 x 32" in result.stdout


def test_show_names_fgvc_classes_from_their_folders(tmp_path):
    write_fgvc_tree(tmp_path / "fgvc", ["OxfordFlowers"])
    suite = load_suite("fgvc")
    (task,) = suite.select(["OxfordFlowers"])
    shown = show_task(suite, tmp_path / "fgvc", task, tmp_path / "show", per_class=2)
    assert shown["tiles"] == 102 and Path(shown["png"]).is_file()
    names = class_names(list_images("fgvc", tmp_path / "fgvc" / "OxfordFlowers", task, "train"))
    assert names[0] == "0001.class" and len(names) == 102  # class id 1 is label 0
