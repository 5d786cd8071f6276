"""Archives unpacked with their expansion bounded (a zip bomb is refused before anything is written), only what
the FGVC layout needs unpacked, and the staging copy removed (fault 15). Archives are built small in tmp_path."""
from __future__ import annotations

import io
import subprocess
import tarfile
import zipfile

import pytest

from petlbench.cli import main
from petlbench.data.archives import ANY_RATIO_UP_TO, unpack
from petlbench.errors import UserError
from tests.conftest import assert_one_line_error

BOMB = ANY_RATIO_UP_TO + (16 << 20)  # zeros: compresses about a thousandfold


def zip_bomb(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("cifar/train800.txt", "images/a.jpg 0\n")
        zf.writestr("cifar/zeros.bin", bytes(BOMB))
    return path


def tar_bomb(path):
    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        info = tarfile.TarInfo("cifar/zeros.bin")
        info.size = BOMB
        tf.addfile(info, io.BytesIO(bytes(BOMB)))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Both bombs, built once (compressing 80 MB of zeros takes a moment)."""
    folder = tmp_path_factory.mktemp("bombs")
    return {"zip": zip_bomb(folder / "vtab.zip"), "tar.gz": tar_bomb(folder / "vtab.tar.gz")}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_bomb_is_refused_before_anything_is_written(tmp_path, bombs, kind):
    archive = bombs[kind]
    assert archive.stat().st_size < BOMB / 200
    with pytest.raises(UserError, match="zip bomb"):
        unpack(archive, tmp_path / "out")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()], "nothing written"


def test_download_of_a_bomb_is_one_line(tmp_path, capsys, bombs):
    archive = bombs["zip"]
    code = main(["data", "download", "vtab1k", "--to", str(tmp_path / "d"), "--archive", str(archive)])
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess([], code, captured.out, captured.err), str(archive),
                          "zip bomb", "would unpack 83,886,095 bytes")
    assert not (tmp_path / "d" / "cifar" / "zeros.bin").exists()


def test_a_large_archive_of_incompressible_data_unpacks(tmp_path):
    """The bound is a ratio: big archives of JPEG-like bytes (about 1x) unpack in full."""
    import os
    blob = os.urandom(2 << 20)
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("cifar/random.bin")
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "cifar" / "random.bin").read_bytes() == blob


def test_keep_unpacks_only_the_members_asked_for(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("CUB/train.json", "{}")
        zf.writestr("CUB/README", "not needed")
        zf.writestr("other/big.bin", bytes(1000))
    unpack(archive, tmp_path / "out", keep=lambda name: name.endswith(".json"))
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith(".")) \
        == ["train.json"]
