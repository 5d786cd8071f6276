"""`petlbench data check` on good and broken trees of both layouts, and `petlbench data download` from archives the
tests build (zip, tar.gz, one with a member escaping the target). No network: the hub is only ever asked offline."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

import numpy as np
from PIL import Image

from petlbench.cli import main
from tests.conftest import assert_one_line_error, petlbench_cli
from tests.fixtures import write_fgvc_tree, write_vtab_tree
from tests.test_data_pixels import bomb_png


def check(capsys, *args: str) -> tuple[int, dict[str, list[str]], str]:
    """Run `petlbench data check ARGS` in-process; returns the exit code, the table rows by task, and stdout."""
    code = main(["data", "check", *args])
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "task":
            rows[cells[0]] = cells[1:]
    return code, rows, out


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI entry point in-process (much faster than a subprocess), its output captured like one."""
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def problem_lines(out: str) -> list[str]:
    section = out.split("\nproblems:\n")[-1].split("\nleakage")[0]  # the leakage report follows the problems
    return [line.strip() for line in section.splitlines() if line.startswith("  ")]


# --------------------------------------------------------------------------------------------------
# good trees


def test_good_vtab_tree_with_aliases(tmp_path, capsys):
    write_vtab_tree(tmp_path)
    (tmp_path / "cifar").rename(tmp_path / "cifar100")
    (tmp_path / "oxford_iiit_pet").rename(tmp_path / "oxford_pet")
    code, rows, out = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path))
    assert code == 0, out
    assert len(rows) == 19 and all(r[-1] == "ok" for r in rows.values())
    assert rows["cifar"] == ["cifar100", "4", "2", "6", "3", "4/100", "noah-jpeg", "ok"]  # folder, 4 splits,
    assert rows["oxford_iiit_pet"][0] == "oxford_pet"                                     # classes, build, status
    assert rows["patch_camelyon"][-3] == "2/2"
    assert "19 of 19 tasks ok" in out and "problems:" not in out


def test_good_fgvc_tree_with_aliases(tmp_path, capsys, monkeypatch):
    write_fgvc_tree(tmp_path)
    (tmp_path / "CUB").rename(tmp_path / "CUB_200_2011")
    monkeypatch.setenv("PETLBENCH_DATA_ROOT", str(tmp_path))  # no --data-root: the environment's
    code, rows, out = check(capsys, "--suite", "fgvc")
    assert code == 0, out
    assert rows["CUB"] == ["CUB_200_2011", "200", "2", "3", "200/200", "unknown", "ok"]
    assert "all tasks: fgvc layout: builds are told apart for VTAB-1k's NOAH layout only" in out
    assert rows["nabirds"][1:5] == ["555", "2", "3", "555/555"]
    assert set(rows) == {"CUB", "nabirds", "OxfordFlowers", "StanfordDogs", "StanfordCars"}


def test_task_subset_and_own_suite_file(tmp_path, capsys):
    write_vtab_tree(tmp_path / "data", tasks=["cifar", "kitti"])
    shutil.rmtree(tmp_path / "data" / "kitti" / "images")  # broken, but not selected
    code, rows, _ = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path / "data"), "--tasks", "cifar100")
    assert code == 0 and list(rows) == ["cifar"]
    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\nlayout: noah\ntasks:\n  - {name: cifar, classes: 100}\n")
    code, rows, _ = check(capsys, "--suite", str(suite), "--data-root", str(tmp_path / "data"))
    assert code == 0 and list(rows) == ["cifar"]


# --------------------------------------------------------------------------------------------------
# broken trees: exit 1, the task and the exact file named, the other tasks still ok


def garble(path: Path) -> Path:
    path.write_bytes(b"garbage, not an image" * 4)
    return path


def truncate(path: Path) -> Path:
    """Headers intact, the end of the scan data gone: only decoding the pixels notices."""
    path.write_bytes(path.read_bytes()[:-50])
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def append(path: Path, line: str) -> Path:
    path.write_text(path.read_text() + line + "\n")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def float_tiff(path: Path) -> Path:
    """A float image with values outside [0, 1]: PIL decodes it; nothing says how to scale it to 8 bits."""
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(path, format="TIFF")
    return path


VTAB_BREAKS = {
    "missing task folder": ("dtd", lambda r: shutil.rmtree(r / "dtd") or r / "dtd", "task folder not found"),
    "missing split file": ("svhn", lambda r: (r / "svhn/test.txt").unlink() or r / "svhn/test.txt",
                           "split file not found"),
    "label out of range": ("eurosat", lambda r: append(r / "eurosat/val200.txt", "images/val200/000000.jpg 10"),
                           ":3: label 10 outside [0, 10)"),
    "unreadable image": ("kitti", lambda r: garble(r / "kitti/images/test/000001.jpg"), "unreadable image"),
    "truncated image": ("kitti", lambda r: truncate(r / "kitti/images/train800/000000.jpg"), "unreadable image"),
    "missing image": ("dmlab", lambda r: (r / "dmlab/images/test/000002.jpg").unlink() or
                      r / "dmlab/images/test/000002.jpg", "listed image not found"),
    "path escaping the data root": ("resisc45", lambda r: append(r / "resisc45/test.txt", "../../outside.jpg 0"),
                                    "path '../../outside.jpg' escapes the task folder"),
    "path into another task": ("resisc45", lambda r: append(r / "resisc45/test.txt",
                                                            "../cifar/images/test/000000.jpg 0"), "escapes"),
    "split file not UTF-8": ("svhn", lambda r: write_bytes(r / "svhn/val200.txt",
                                                           b"images/val200/000000.jpg 0\nimages/\xff.jpg 1\n"),
                             ":2: not UTF-8"),
    "superscript label": ("eurosat", lambda r: append(r / "eurosat/val200.txt", "images/val200/000000.jpg \u00b2"),
                          ":3: expected '<relative image path> <int label>'"),
    "same image twice in a split": ("dtd", lambda r: append(r / "dtd/test.txt", "images/test/000000.jpg 1"),
                                    ":4: image 'images/test/000000.jpg' listed twice in one split (lines 1 and 4)"),
    "float image out of [0, 1]": ("kitti", lambda r: float_tiff(r / "kitti/images/test/000001.jpg"), "mode 'F'"),
    "decompression bomb": ("kitti", lambda r: bomb_png(r / "kitti/images/val200/000000.jpg"), "decompression bomb"),
}


@pytest.mark.parametrize("case", VTAB_BREAKS, ids=list(VTAB_BREAKS))
def test_broken_vtab_tree(tmp_path, capsys, case):
    write_vtab_tree(tmp_path)
    task, breaker, needle = VTAB_BREAKS[case]
    culprit = breaker(tmp_path)
    code, rows, out = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path))
    assert code == 1, out
    assert [t for t, r in rows.items() if r[-1] != "ok"] == [task]
    (line,) = problem_lines(out)
    assert line.startswith(f"{task}: {culprit}") and needle in line, line
    assert f"18 of 19 tasks ok; with problems: {task}" in out


def test_many_broken_images_are_counted(tmp_path, capsys):
    write_vtab_tree(tmp_path, tasks=["svhn"], sizes={"train800": 9, "val200": 2, "test": 3})
    for i in range(8):
        garble(tmp_path / f"svhn/images/train800/{i:06d}.jpg")
    code, _, out = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path), "--tasks", "svhn")
    lines = problem_lines(out)
    assert code == 1 and len(lines) == 6 and lines[-1] == "svhn: ... and 3 more"
    assert lines[0] == f"svhn: {tmp_path / 'svhn/images/train800/000000.jpg'}: unreadable image " \
                       f"(cannot identify image file '{tmp_path / 'svhn/images/train800/000000.jpg'}')"


def test_16_bit_png_and_bom_split_files_are_fine(tmp_path, capsys):
    """What run decodes correctly, data check passes: a 16-bit PNG, split files saved with a UTF-8 BOM."""
    write_vtab_tree(tmp_path, tasks=["kitti", "dsprites_loc"])
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "kitti/images/test/000000.jpg", format="PNG")
    for split in tmp_path.glob("dsprites_loc/*.txt"):
        split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes())
    code, rows, out = check(capsys, "--suite", "vtab1k", "--data-root", str(tmp_path), "--tasks",
                            "kitti,dsprites_loc")
    assert code == 0 and "problems:" not in out, out
    assert rows["dsprites_loc"][1:5] == ["4", "2", "6", "3"]


def test_fgvc_image_listed_twice(tmp_path, capsys):
    """JSON keeps the last of two equal keys: the split silently loses an image, so data check says so."""
    write_fgvc_tree(tmp_path, tasks=["OxfordFlowers"])
    val = tmp_path / "OxfordFlowers/val.json"
    (first, cid), (second, _) = json.loads(val.read_text()).items()
    val.write_text(f'{{"{first}": {cid}, "{second}": {cid}, "./{first}": 1, "{second}": {cid}}}')
    code, _, out = check(capsys, "--suite", "fgvc", "--data-root", str(tmp_path), "--tasks", "OxfordFlowers")
    assert code == 1
    twice = f"OxfordFlowers: {val}: image"
    assert problem_lines(out) == [f"{twice} './{first}' listed twice in one split (entries 1 and 3)",
                                  f"{twice} '{second}' listed twice in one split (entries 2 and 4)"]


def drop_class(task_dir: Path, cid: int) -> Path:
    for name in ("train.json", "val.json", "test.json"):
        data = json.loads((task_dir / name).read_text())
        (task_dir / name).write_text(json.dumps({k: v for k, v in data.items() if v != cid}))
    return task_dir


FGVC_BREAKS = {
    "wrong number of classes": ("CUB", lambda r: drop_class(r / "CUB", 1),
                                "the split files (test.json, train.json, val.json) hold 199 distinct class ids, "
                                "expected 200"),
    "missing json": ("nabirds", lambda r: (r / "nabirds/val.json").unlink() or r / "nabirds/val.json",
                     "split file not found"),
    "image outside the task folder": ("StanfordCars", lambda r: write(r / "StanfordCars/test.json",
                                                                      json.dumps({"../../x.jpg": 1})),
                                      "path '../../x.jpg' escapes the task folder"),
    "missing image": ("StanfordDogs", lambda r: shutil.rmtree(r / "StanfordDogs/Images/0000.class")
                      or r / "StanfordDogs/Images/0000.class", "listed image not found"),
}


@pytest.mark.parametrize("case", FGVC_BREAKS, ids=list(FGVC_BREAKS))
def test_broken_fgvc_tree(tmp_path, capsys, case):
    write_fgvc_tree(tmp_path)
    task, breaker, needle = FGVC_BREAKS[case]
    culprit = breaker(tmp_path)
    code, rows, out = check(capsys, "--suite", "fgvc", "--data-root", str(tmp_path))
    assert code == 1, out
    assert [t for t, r in rows.items() if r[-1] != "ok"] == [task]
    lines = problem_lines(out)
    assert lines and all(line.startswith(f"{task}: {culprit}") for line in lines), lines
    assert needle in lines[0]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PETLBENCH_DATA_ROOT", raising=False)
    assert_one_line_error(petlbench_cli("data", "check", "--suite", "nosuch", "--data-root", str(tmp_path),
                                        env={"PETLBENCH_DATA_ROOT": ""}), "--suite", "'nosuch'")  # the real command
    assert_one_line_error(cli(capsys, "data", "check", "--suite", "vtab1k", "--data-root", str(tmp_path / "no")),
                          str(tmp_path / "no"), "folder not found")
    assert_one_line_error(cli(capsys, "data", "check", "--suite", "vtab1k"), "--data-root", "PETLBENCH_DATA_ROOT")
    assert_one_line_error(cli(capsys, "data", "check", "--suite", "vtab1k", "--data-root", str(tmp_path),
                              "--tasks", "imagenet"), "--tasks", "'imagenet'")
    bad_suite = tmp_path / "bad.yaml"
    bad_suite.write_text("name: bad\nlayout: coco\ntasks: [{name: a, classes: 2}]\n")
    assert_one_line_error(cli(capsys, "data", "check", "--suite", str(bad_suite), "--data-root", str(tmp_path)),
                          str(bad_suite), "'layout'")


# --------------------------------------------------------------------------------------------------
# download: unpack archives the tests build, then check; never the network


def zip_tree(src: Path, archive: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, f"{prefix}/{path.relative_to(src)}")
    return archive


def tar_tree(src: Path, archive: Path, prefix: str, names: list[str] | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for child in sorted(src.iterdir()):
            if names is None or child.name in names:
                tf.add(child, f"{prefix}/{child.name}")
    return archive


def test_download_vtab_from_zip(tmp_path, capsys):
    write_vtab_tree(tmp_path / "src")
    archive = zip_tree(tmp_path / "src", tmp_path / "vtab-1k.zip", "vtab-1k")
    dest = tmp_path / "dest"
    result = cli(capsys, "data", "download", "vtab1k", "--archive", str(archive), "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert f"data root: {dest / 'vtab-1k'}" in result.stdout and "19 of 19 tasks ok" in result.stdout
    assert (dest / "vtab-1k/sun397/images/test/000002.jpg").is_file()
    again = cli(capsys, "data", "download", "vtab1k", "--archive", str(archive), "--to", str(dest))
    assert again.returncode == 0 and "unpacked before, skipped" in again.stdout


def test_download_fgvc_from_two_tar_gz(tmp_path, capsys):
    write_fgvc_tree(tmp_path / "src")
    first = tar_tree(tmp_path / "src", tmp_path / "birds.tar.gz", "fgvc", ["CUB", "nabirds"])
    second = tar_tree(tmp_path / "src", tmp_path / "rest.tar.gz", "fgvc", ["OxfordFlowers", "StanfordCars",
                                                                          "StanfordDogs"])
    dest = tmp_path / "dest"
    result = cli(capsys, "data", "download", "fgvc", "--archive", str(first), "--archive", str(second),
                           "--to", str(dest))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"data root: {dest / 'fgvc'}" in result.stdout and "5 of 5 tasks ok" in result.stdout


def test_download_of_a_broken_tree_reports_it(tmp_path, capsys):
    write_vtab_tree(tmp_path / "src")
    garble(tmp_path / "src/clevr_count/images/val200/000001.jpg")
    archive = tar_tree(tmp_path / "src", tmp_path / "vtab.tar.gz", "vtab-1k")
    result = cli(capsys, "data", "download", "vtab1k", "--archive", str(archive), "--to", str(tmp_path / "d"))
    assert result.returncode == 1
    assert f"clevr_count: {tmp_path / 'd/vtab-1k/clevr_count/images/val200/000001.jpg'}: unreadable" in result.stdout


def evil_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("vtab-1k/cifar/train800.txt", "images/train800/000000.jpg 0\n")
        zf.writestr("../evil", "escaped")
    return path


def evil_tar(path: Path, name: str, link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("vtab-1k/cifar/train800.txt")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"x 0"))
        bad = tarfile.TarInfo(name)
        if link:
            bad.type, bad.linkname = tarfile.SYMTYPE, link
        else:
            bad.size = 7
        tf.addfile(bad, None if link else io.BytesIO(b"escaped"))
    return path


@pytest.mark.parametrize("make,member", [
    (lambda p: evil_zip(p / "evil.zip"), "../evil"),
    (lambda p: evil_tar(p / "evil.tar.gz", "../evil"), "../evil"),
    (lambda p: evil_tar(p / "abs.tar.gz", str(p / "abs_evil")), "abs_evil"),
    (lambda p: evil_tar(p / "link.tar.gz", "vtab-1k/link", link="../../../evil"), "vtab-1k/link"),
], ids=["zip-dotdot", "tar-dotdot", "tar-absolute", "tar-symlink-out"])
def test_archive_member_escaping_the_target_is_refused(tmp_path, capsys, make, member):
    archive = make(tmp_path)
    dest = tmp_path / "inner" / "dest"
    result = cli(capsys, "data", "download", "vtab1k", "--archive", str(archive), "--to", str(dest))
    assert_one_line_error(result, str(archive), member)
    assert not (tmp_path / "inner" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path / "abs_evil").exists()
    assert not (dest / "vtab-1k").exists(), "nothing unpacked from a refused archive"


def test_download_needs_a_source_and_says_so_offline(tmp_path, capsys):
    # huggingface_hub makes no request at all; it reads HF_HUB_OFFLINE when imported, so a process of its own
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    fgvc = petlbench_cli("data", "download", "fgvc", "--to", str(tmp_path / "d"), env=offline, process=True)
    assert_one_line_error(fgvc, "cannot reach the Hugging Face hub", "XiN0919/FGVC", "--archive")
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    assert_one_line_error(cli(capsys, "data", "download", "vtab1k", "--archive", str(not_archive), "--to",
                                        str(tmp_path / "d")), str(not_archive), "not a zip or tar archive")
    result = petlbench_cli("data", "download", "vtab1k", "--to", str(tmp_path / "d"), env=offline, process=True)
    assert_one_line_error(result, "cannot reach the Hugging Face hub", "XiN0919/VTAB-1k", "--archive")
