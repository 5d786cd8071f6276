"""The train/test leakage check of `petlbench data check` compares decoded pixels, not file names or formats: a
JPEG's 1/8-scale draft only proposes a match, the full decode makes it (fault 6)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from petlbench.cli import main
from petlbench.data.decode import open_rgb


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def check(capsys, root: Path) -> subprocess.CompletedProcess:
    return cli(capsys, "data", "check", "--suite", "demo", "--data-root", str(root), "--tasks", "count")


def add_test_image(task_dir: Path, name: str, image: Image.Image, label: int = 0) -> Path:
    path = task_dir / "images" / "test" / name
    image.save(path, quality=100) if name.endswith(".jpg") else image.save(path)
    with open(task_dir / "test.txt", "a") as f:
        f.write(f"images/test/{name} {label}\n")
    return path


def test_a_train_jpeg_saved_as_png_in_test_is_found(capsys, tiny_tasks):
    task = tiny_tasks / "count"
    train_jpeg = task / "images" / "train800" / "000003.jpg"
    png = add_test_image(task, "resaved.png", open_rgb(train_jpeg))  # the JPEG's decoded pixels, lossless
    result = check(capsys, tiny_tasks)
    assert "count: 1 test image(s) also in training splits (0 by path, 1 by content)" in result.stdout
    assert f"by content: {train_jpeg} = {png}" in result.stdout


def test_a_test_jpeg_whose_pixels_a_train_png_holds_is_found(capsys, tiny_tasks):
    task = tiny_tasks / "count"
    test_jpeg = task / "images" / "test" / "000002.jpg"
    open_rgb(test_jpeg).save(task / "images" / "train800" / "lossless.png")
    with open(task / "train800.txt", "a") as f:
        f.write("images/train800/lossless.png 0\n")
    result = check(capsys, tiny_tasks)
    assert "(0 by path, 1 by content)" in result.stdout and f" = {test_jpeg}" in result.stdout


def blocky_pair() -> tuple[Image.Image, Image.Image]:
    """Two different images with equal 8x8 block means: one flat per block, one a checkerboard around it."""
    means = np.random.default_rng(0).integers(60, 190, (4, 4))
    flat = np.kron(means, np.ones((8, 8)))
    checker = (np.indices((32, 32)).sum(0) % 2) * 2 - 1
    return (Image.fromarray(flat.astype(np.uint8)).convert("RGB"),
            Image.fromarray((flat + 40 * checker).astype(np.uint8)).convert("RGB"))


def test_different_jpegs_with_equal_block_means_are_not_a_leak(capsys, tiny_tasks):
    task = tiny_tasks / "count"
    flat, checkered = blocky_pair()
    flat.save(task / "images" / "train800" / "flat.jpg", quality=100)
    with open(task / "train800.txt", "a") as f:
        f.write("images/train800/flat.jpg 0\n")
    test_jpeg = add_test_image(task, "checkered.jpg", checkered)
    # what made the old check flag them: their 1/8-scale drafts are the same pixels
    assert open_rgb(task / "images/train800/flat.jpg", (1, 1)).tobytes() == open_rgb(test_jpeg, (1, 1)).tobytes()
    result = check(capsys, tiny_tasks)
    assert "no train/test leakage" in result.stdout, result.stdout

    add_test_image(task, "flat_copy.jpg", flat)  # the same picture again: still found
    assert "(0 by path, 1 by content)" in check(capsys, tiny_tasks).stdout


def test_pngs_under_other_names_are_compared_in_full(capsys, tiny_tasks):
    task = tiny_tasks / "count"
    flat, checkered = blocky_pair()
    flat.save(task / "images" / "train800" / "a.png")
    with open(task / "train800.txt", "a") as f:
        f.write("images/train800/a.png 0\n")
    add_test_image(task, "b.png", checkered)
    assert "no train/test leakage" in check(capsys, tiny_tasks).stdout
    add_test_image(task, "c.png", flat)
    assert "(0 by path, 1 by content)" in check(capsys, tiny_tasks).stdout
