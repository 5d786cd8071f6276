"""Pixel formats: 16-bit and float images scaled to 8 bits (or refused by name), the everyday modes unchanged, and
`data check` refusing exactly what `run` refuses, one decompression bomb included."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.data.decode import decode, load_images
from petlbench.data.check import verify_image
from petlbench.errors import UserError
from petlbench.specs import Task

SIZE = (8, 8)
PREP = {"input_size": [3, *SIZE], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "nearest"}
RAMP16 = (np.arange(64).reshape(SIZE) * 1028).astype(np.uint16)  # 0 .. 64764, multiples of 257: exact in 8 bits
RAMP_F = (np.arange(64).reshape(SIZE) / 63).astype(np.float32)  # 0 .. 1


def grey(values) -> np.ndarray:
    """The RGB uint8 image (C x H x W) a grey array should decode to."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[None], 3, axis=0)


def save(path: Path, im: Image.Image) -> Path:
    im.save(path)
    return path


GOOD = {  # file name -> (writer, expected C x H x W uint8)
    "png16.png": (lambda p: save(p, Image.fromarray(RAMP16)), grey(RAMP16 // 257)),
    "big_endian16.tif": (lambda p: save(p, Image.frombytes("I;16B", SIZE, RAMP16.astype(">u2").tobytes())),
                         grey(RAMP16 // 257)),
    "int32.tif": (lambda p: save(p, Image.fromarray(RAMP16.astype(np.int32))), grey(RAMP16 // 257)),
    "float01.tif": (lambda p: save(p, Image.fromarray(RAMP_F)), grey(np.round(RAMP_F * 255))),
    "grey.png": (lambda p: save(p, Image.new("L", SIZE, 77)), grey(np.full(SIZE, 77))),
    "bilevel.png": (lambda p: save(p, Image.fromarray(np.eye(8, dtype=bool))), grey(np.eye(8) * 255)),
    "rgba.png": (lambda p: save(p, Image.new("RGBA", SIZE, (10, 20, 30, 128))),
                 np.broadcast_to(np.array([10, 20, 30], np.uint8)[:, None, None], (3, *SIZE))),
    "palette.png": (lambda p: save(p, Image.new("RGB", SIZE, (200, 40, 120)).quantize(4)),
                    np.broadcast_to(np.array([200, 40, 120], np.uint8)[:, None, None], (3, *SIZE))),
    "cmyk.tif": (lambda p: save(p, Image.new("CMYK", SIZE, (0, 255, 255, 0))),
                 np.broadcast_to(np.array([255, 0, 0], np.uint8)[:, None, None], (3, *SIZE))),
    "grey_alpha.png": (lambda p: save(p, Image.new("LA", SIZE, (90, 10))), grey(np.full(SIZE, 90))),
}


def bomb_png(path: Path) -> Path:
    """A valid PNG header claiming 30000 x 30000 pixels: PIL refuses to open it (DecompressionBombError)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


BAD = {  # file name -> (writer, what the one-line refusal says)
    "float_out_of_range.tif": (lambda p: save(p, Image.fromarray(RAMP_F * 4 - 1)), "mode 'F'"),
    "float_nan.tif": (lambda p: save(p, Image.fromarray(np.full(SIZE, np.nan, np.float32))), "mode 'F'"),
    "int32_above_16_bits.tif": (lambda p: save(p, Image.fromarray(np.full(SIZE, 70000, np.int32))), "mode 'I'"),
    "int32_negative.tif": (lambda p: save(p, Image.fromarray(np.full(SIZE, -5, np.int32))), "mode 'I'"),
    "bomb.png": (bomb_png, "decompression bomb"),
}


def task_with(root: Path, name: str, writer) -> tuple[Path, Path]:
    """A NOAH task whose test split lists one image, written by `writer`."""
    folder = root / "task" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = writer(folder / name)
    (root / "task" / "test.txt").write_text(f"images/{name} 0\n")
    return root / "task", path


@pytest.mark.parametrize("name", GOOD, ids=list(GOOD))
def test_modes_decode_to_the_right_8_bit_pixels(tmp_path, name):
    writer, expected = GOOD[name]
    task, path = task_with(tmp_path, name, writer)
    for cache in (None, tmp_path / "cache"):
        data = load_images("noah", task, Task("task", 2), ["test"], PREP, cache_dir=cache)
        assert np.array_equal(data.images[0].numpy(), expected), (name, data.images[0, 0].tolist())
    assert verify_image(path)[0] is None


@pytest.mark.parametrize("name", BAD, ids=list(BAD))
def test_unscalable_pixels_and_bombs_are_one_line_naming_the_file(tmp_path, name):
    writer, needle = BAD[name]
    task, path = task_with(tmp_path, name, writer)
    with pytest.raises(UserError) as err:
        load_images("noah", task, Task("task", 2), ["test"], PREP, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and needle in msg, msg
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")], "no entry was written"
    assert verify_image(path)[0] == msg.removeprefix(f"{path}: ")  # data check says exactly what run says


@pytest.mark.parametrize("name", [*GOOD, *BAD])
def test_data_check_refuses_exactly_what_run_refuses(tmp_path, name):
    writer = {**GOOD, **BAD}[name][0]
    path = writer(tmp_path / name)
    try:
        decode(path, (4, 4), "bicubic", keep_aspect=True)
        refused = None
    except UserError as exc:
        refused = str(exc).removeprefix(f"{path}: ")
    assert verify_image(path)[0] == refused
