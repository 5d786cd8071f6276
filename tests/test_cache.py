"""The on-disk decoded-image cache: decode once, read back memory-mapped, re-decode when a source changes."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from petlbench.data.cache import CACHE_ENV, FORMAT, cached_split, content_digest, entry_key, entry_name, resolve_cache_dir
from petlbench.data.decode import decode_all, load_images, load_split_arrays
from petlbench.data.layouts import find_task_dir, list_images, split_file
from petlbench.errors import UserError
from petlbench.suite import load_suite
from tests.fixtures import write_fgvc_tree, write_vtab_tree

PREP = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic"}
KITTI = next(t for t in load_suite("vtab1k").tasks if t.name == "kitti")


@pytest.fixture
def task_dir(tmp_path) -> Path:
    return write_vtab_tree(tmp_path / "data", tasks=["kitti"], sizes={"train800": 6, "val200": 2})["kitti"].dir


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".")) if cache.exists() else []


def garble_keeping_stat(path: Path) -> None:
    """Same size, same mtime_ns, bytes no decoder accepts: only a cache that checks content could notice."""
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_first_load_writes_entry_second_reads_it(tmp_path, task_dir):
    cache = tmp_path / "cache"
    images, labels, _ = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)
    (entry,) = entries(cache)
    assert {p.name for p in entry.iterdir()} == {"images.npy", "labels.npy", "meta.json"}
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (6, 3, 16, 16)
    plain_images, plain_labels, _ = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, None)
    assert np.array_equal(images, plain_images) and np.array_equal(labels, plain_labels)
    assert np.array_equal(np.load(entry / "images.npy"), plain_images)

    bad = task_dir / "images" / "train800" / "000003.jpg"
    garble_keeping_stat(bad)
    with pytest.raises(UserError):  # the garbage really is undecodable
        load_split_arrays("noah", task_dir, KITTI, "train800", PREP, None)
    again, again_labels, _ = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)
    assert np.array_equal(again, plain_images) and np.array_equal(again_labels, plain_labels)  # no decode ran

    st = bad.stat()
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed: decode again, and fail
    with pytest.raises(UserError) as err:
        load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: unreadable image")
    assert entries(cache) == [entry], "the failed decode left no new entry"
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")], "nor a temp folder"


def test_changed_size_also_redecodes(tmp_path, task_dir):
    cache = tmp_path / "cache"
    load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    bad = task_dir / "images" / "val200" / "000001.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="unreadable image"):
        load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)


def test_changed_split_file_replaces_the_stale_entry(tmp_path, task_dir):
    cache = tmp_path / "cache"
    _, labels, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    (old,) = entries(cache)
    split = task_dir / "val200.txt"
    lines = split.read_text().splitlines()
    split.write_text(f"{lines[0].split()[0]} 3\n{lines[1]}\n")  # relabel the first image
    _, relabelled, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    assert relabelled.tolist() == [3, int(labels[1])] and labels[0] != 3
    (new,) = entries(cache)
    assert new != old and not old.exists()


@pytest.mark.parametrize("change", [{"input_size": [3, 12, 12]}, {"interpolation": "bilinear"}, {"crop_pct": 0.875}],
                         ids=["size", "interpolation", "crop_pct"])
def test_other_preprocessing_is_another_entry(tmp_path, task_dir, change):
    cache = tmp_path / "cache"
    first, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    other, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", {**PREP, **change}, cache)
    assert len(entries(cache)) == 2
    plain, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", {**PREP, **change}, None)
    assert np.array_equal(other, plain)
    if "interpolation" in change:
        assert other.shape == first.shape
    elif "crop_pct" in change:
        assert other.shape[-2:] == (18, 18)  # round(16 / 0.875)


def test_leftover_temp_folder_is_ignored(tmp_path, task_dir):
    """A process killed while writing leaves a .tmp-* folder; it is never read as an entry."""
    cache = tmp_path / "cache"
    load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    (entry,) = entries(cache)
    good = np.load(entry / "images.npy")
    leftover = cache / f".tmp-{entry.name}-killed"
    entry.rename(leftover)
    np.save(leftover / "images.npy", np.zeros_like(good))  # what a half-written file could hold
    images, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    assert np.array_equal(images, good)
    assert leftover.is_dir() and len(entries(cache)) == 1


def test_damaged_entry_is_decoded_again(tmp_path, task_dir, capsys):
    cache = tmp_path / "cache"
    good, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    good = np.array(good)
    (entry,) = entries(cache)
    (entry / "images.npy").write_bytes((entry / "images.npy").read_bytes()[:100])
    images, _, _ = load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    assert np.array_equal(images, good)
    assert "images.npy" in one_warning(capsys, entry)


def test_load_images_same_with_and_without_cache(tmp_path):
    """The runner's path: FGVC train + val through the cache equals the plain decode, labels remapped."""
    info = write_fgvc_tree(tmp_path / "data", tasks=["OxfordFlowers"])["OxfordFlowers"]
    task = next(t for t in load_suite("fgvc").tasks if t.name == "OxfordFlowers")
    prep = {**PREP, "input_size": [3, 8, 8], "crop_pct": 0.875, "train_augment": "random_crop_flip"}
    plain = load_images("fgvc", info.dir, task, ["train", "val"], prep, train=True)
    for _ in range(2):  # decode into the cache, then read from it
        cached = load_images("fgvc", info.dir, task, ["train", "val"], prep, train=True, cache_dir=tmp_path / "c")
        assert torch.equal(cached.images, plain.images) and torch.equal(cached.labels, plain.labels)
    assert len(entries(tmp_path / "c")) == 2 and cached.images.shape == (104, 3, 9, 9)
    single = load_images("fgvc", info.dir, task, ["val"], prep, cache_dir=tmp_path / "c")  # memory-mapped
    x, y = single.batch(torch.tensor([1, 0]))
    assert x.shape == (2, 3, 8, 8) and y.tolist() == plain.labels[[103, 102]].tolist()


def test_parallel_loaders_decode_once(tmp_path, task_dir):
    """Jobs started together on one task (a sweep): one decodes while holding the lock, the others read its entry."""
    items = list_images("noah", task_dir, KITTI, "train800")
    key = entry_key(task_dir, "noah", "train800", (16, 16), "bicubic", False)
    calls, results = [], []

    def slow_decode(out):
        calls.append(1)
        time.sleep(0.3)  # long enough for every other loader to arrive while this one decodes
        decode_all(items, PREP, out)

    def load():
        results.append(cached_split(tmp_path / "cache", key, task_dir, split_file("noah", task_dir, "train800"),
                                    items, slow_decode))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4 and len(entries(tmp_path / "cache")) == 1
    plain, _ = decode_all(items, PREP)
    assert all(np.array_equal(images, plain) for images, _, _ in results)


def test_resolve_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert resolve_cache_dir(None) == Path("~/.cache/petlbench/decoded").expanduser()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"  # the flag beats the environment
    assert resolve_cache_dir("~/x") == Path("~/x").expanduser()
    assert resolve_cache_dir("none") is None and resolve_cache_dir("None") is None
    monkeypatch.setenv(CACHE_ENV, "none")
    assert resolve_cache_dir(None) is None


def test_unwritable_cache_dir_is_one_line(tmp_path, task_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(UserError) as err:
        load_split_arrays("noah", task_dir, KITTI, "val200", PREP, blocker / "cache")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(blocker / "cache")) and "--cache-dir none" in msg


# --------------------------------------------------------------------------------------------------
# an entry is verified on every load: damage of any kind is one warning line, then a fresh decode


def one_warning(capsys, entry: Path) -> str:
    """The single stderr line a damaged entry gives; returns what was wrong."""
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    prefix, suffix = f"petlbench: warning: {entry}: ", "; decoding again"
    assert err[0].startswith(prefix) and err[0].endswith(suffix), err[0]
    return err[0][len(prefix):-len(suffix)]


def rewrite_meta(entry: Path, **changes) -> None:
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, **changes}))


def overwrite_pixels(entry: Path) -> None:
    images = np.load(entry / "images.npy", mmap_mode="r+")
    images[:] = 255 - images  # same file size, header and mtime order: only the content says it changed
    images.flush()


def shift_labels(entry: Path) -> None:
    labels = np.load(entry / "labels.npy", mmap_mode="r+")
    labels[:] = np.roll(np.array(labels), 1)
    labels.flush()


def relabel_with_matching_checksum(entry: Path) -> None:
    """Labels that differ from the split file, with a checksum that agrees with them."""
    images, labels = np.load(entry / "images.npy"), np.load(entry / "labels.npy")
    np.save(entry / "labels.npy", labels + 1)
    rewrite_meta(entry, content_sha256=content_digest(images, labels + 1))


def out_of_range_labels(entry: Path) -> None:
    images, labels = np.load(entry / "images.npy"), np.load(entry / "labels.npy")
    np.save(entry / "labels.npy", labels + 10**6)
    rewrite_meta(entry, content_sha256=content_digest(images, labels + 10**6))


def replace_by_file(entry: Path) -> None:
    shutil.rmtree(entry)
    entry.write_text("not a folder")


DAMAGE = {
    "overwritten pixels": (overwrite_pixels, "checksum"),
    "shifted labels": (shift_labels, "checksum"),
    "labels differ from the split file": (relabel_with_matching_checksum, "split file"),
    "out-of-range labels": (out_of_range_labels, "split file"),
    "zero-byte images.npy": (lambda e: (e / "images.npy").write_bytes(b""), "images.npy"),
    "zero-byte labels.npy": (lambda e: (e / "labels.npy").write_bytes(b""), "labels.npy"),
    "zero-byte meta.json": (lambda e: (e / "meta.json").write_bytes(b""), "meta.json"),
    "missing meta.json": (lambda e: (e / "meta.json").unlink(), "meta.json"),
    "meta.json not JSON": (lambda e: (e / "meta.json").write_text("{'images': 2,"), "meta.json"),
    "meta.json without checksum": (lambda e: rewrite_meta(e, content_sha256=None), "meta.json"),
    "entry replaced by a file": (replace_by_file, "not a folder"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_entry_warns_once_and_is_rebuilt(tmp_path, task_dir, capsys, case):
    cache = tmp_path / "cache"
    plain_images, plain_labels = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, None)[:2]
    load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)
    (entry,) = entries(cache)
    damage, needle = DAMAGE[case]
    damage(entry)
    capsys.readouterr()
    images, labels = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)[:2]
    assert needle in one_warning(capsys, entry)
    assert np.array_equal(images, plain_images) and np.array_equal(labels, plain_labels)
    assert entries(cache) == [entry] and (entry / "meta.json").is_file()
    again = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)  # repaired: silent from now on
    assert np.array_equal(again[0], plain_images) and capsys.readouterr().err == ""


def test_meta_holds_the_checksum_of_the_arrays(tmp_path, task_dir):
    cache = tmp_path / "cache"
    images, labels, digest = load_split_arrays("noah", task_dir, KITTI, "train800", PREP, cache)
    (entry,) = entries(cache)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["content_sha256"] == digest == content_digest(np.load(entry / "images.npy"),
                                                              np.load(entry / "labels.npy"))
    assert len(digest) == 64 and digest != content_digest(images, labels[::-1].copy())


def test_old_format_entry_of_the_same_key_is_removed(tmp_path, task_dir):
    """Entries written before a format change are never read again; they do not stay behind filling the disk."""
    cache = tmp_path / "cache"
    old_key = {**entry_key(task_dir, "noah", "val200", (16, 16), "bicubic", False), "format": FORMAT - 1}
    old = cache / entry_name(old_key, "0" * 64)
    old.mkdir(parents=True)
    (old / "meta.json").write_text(json.dumps({**old_key, "images": 2}))
    other_task = cache / entry_name({**old_key, "task_dir": str(tmp_path / "elsewhere" / "kitti")}, "0" * 64)
    shutil.copytree(old, other_task)
    (other_task / "meta.json").write_text(json.dumps({**old_key, "task_dir": str(tmp_path / "elsewhere" / "kitti")}))
    load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    assert not old.exists() and other_task.is_dir() and len(entries(cache)) == 2


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_entries_honour_the_umask(tmp_path, task_dir, umask):
    """A colleague sharing the cache reads it: folders and files get the modes any other file would."""
    cache = tmp_path / "cache"
    old = os.umask(umask)
    try:
        load_split_arrays("noah", task_dir, KITTI, "val200", PREP, cache)
    finally:
        os.umask(old)
    (entry,) = entries(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o777 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()} == dict.fromkeys(
        ["images.npy", "labels.npy", "meta.json"], 0o666 & ~umask)


@pytest.mark.parametrize("link", ["data root", "task folder"])
def test_symlinked_data_root_or_task_folder(tmp_path, link):
    """The cache keys on the real folder but lists images under the path given: both kinds of link work."""
    real = write_vtab_tree(tmp_path / "disk2", tasks=["kitti"], sizes={"train800": 3, "val200": 2})["kitti"].dir
    if link == "data root":
        (tmp_path / "data").symlink_to(tmp_path / "disk2", target_is_directory=True)
    else:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "kitti").symlink_to(real, target_is_directory=True)
    task_dir = find_task_dir(tmp_path / "data", KITTI)
    plain = load_images("noah", real, KITTI, ["train800", "val200"], PREP)
    for _ in range(2):  # decode into the cache, then read from it
        cached = load_images("noah", task_dir, KITTI, ["train800", "val200"], PREP, cache_dir=tmp_path / "c")
        assert torch.equal(cached.images, plain.images) and torch.equal(cached.labels, plain.labels)
    assert len(entries(tmp_path / "c")) == 2
