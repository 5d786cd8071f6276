"""The offline demo: small synthetic tasks written in the NOAH VTAB-1k layout, and a tiny ViT
pre-trained on a different synthetic task, so transfer from frozen features means something.

A frozen *random* backbone would make every PETL comparison meaningless (its features are noise),
so the demo backbone is first pre-trained for a short while on an upstream task drawn here (shape x colour
of one object; petlbench.engine.demo_backbone trains it); the demo's downstream tasks then ask for things the
upstream task did not (counting, position), as VTAB's structured group does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ((230, 60, 50), (60, 200, 80), (70, 110, 240), (240, 210, 50))  # red, green, blue, yellow
SIZE = 32
SPLITS = {"train800": 800, "val200": 200, "test": 500}
UPSTREAM_IMAGES = 12000
VERSION = 1  # bump when the generated data or the pre-training changes


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))


def canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A 4x canvas with a dim, noisy background; `finish` shrinks it to SIZE with anti-aliasing."""
    base = rng.integers(0, 70, size=3)
    grain = (SIZE * 4, SIZE * 4, 1 if rng.random() < 0.5 else 3)  # grey or coloured noise
    pixels = np.clip(base + rng.integers(-20, 21, size=grain), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image, ImageDraw.Draw(image)


def finish(image: Image.Image) -> Image.Image:
    return image.resize((SIZE, SIZE), Image.LANCZOS)


def jitter(rng, colour):
    return tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in colour)


def upstream_sample(rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One object; label = shape x colour (24 classes). Position and size vary but are not asked."""
    shape, colour = rng.integers(len(SHAPES)), rng.integers(len(COLOURS))
    image, draw = canvas(rng)
    r = rng.uniform(20, 44)
    draw_shape(draw, SHAPES[shape], rng.uniform(r, 128 - r), rng.uniform(r, 128 - r), r, jitter(rng, COLOURS[colour]))
    return finish(image), int(shape * len(COLOURS) + colour)


def shapes_sample(rng):
    """Which shape (6 classes), in a colour the upstream task never showed."""
    shape = rng.integers(len(SHAPES))
    image, draw = canvas(rng)
    r = rng.uniform(16, 40)
    colour = tuple(int(c) for c in rng.integers(60, 256, size=3))
    draw_shape(draw, SHAPES[shape], rng.uniform(r, 128 - r), rng.uniform(r, 128 - r), r, colour)
    return finish(image), int(shape)


def count_sample(rng):
    """How many objects (1 to 6 -> labels 0 to 5), like VTAB's clevr_count."""
    n = int(rng.integers(1, 7))
    image, draw = canvas(rng)
    cells = rng.choice(16, size=n, replace=False)
    for cell in cells:
        r = rng.uniform(9, 14)
        cx, cy = (cell % 4) * 32 + 16 + rng.uniform(-4, 4), (cell // 4) * 32 + 16 + rng.uniform(-4, 4)
        draw_shape(draw, SHAPES[rng.integers(len(SHAPES))], cx, cy, r, jitter(rng, COLOURS[rng.integers(len(COLOURS))]))
    return finish(image), n - 1


def position_sample(rng):
    """Which cell of a 3x3 grid holds the object (9 classes), like VTAB's dsprites_loc."""
    cell = int(rng.integers(9))
    image, draw = canvas(rng)
    r = rng.uniform(10, 18)
    cx = (cell % 3) * 128 / 3 + 64 / 3 + rng.uniform(-6, 6)
    cy = (cell // 3) * 128 / 3 + 64 / 3 + rng.uniform(-6, 6)
    draw_shape(draw, SHAPES[rng.integers(len(SHAPES))], cx, cy, r, jitter(rng, COLOURS[rng.integers(len(COLOURS))]))
    return finish(image), cell


TASKS: dict[str, Callable] = {"shapes": shapes_sample, "count": count_sample, "position": position_sample}


def write_task(root: Path, name: str, seed: int, sizes: dict[str, int] = SPLITS, kind: str | None = None,
               sample: Callable | None = None) -> None:
    """Write one task in the NOAH layout: <task>/images/<split>/%06d.jpg and <split>.txt lists.

    `sizes` gives the images per split (train800, val200, test) and `kind` the generator (default:
    the task's name, or `sample(rng) -> (image, label)` itself); tests write smaller tasks under other names.
    """
    sample = sample or TASKS[kind or name]
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {}
    for split, count in sizes.items():
        folder = root / name / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(count):
            image, label = sample(rng)
            image.save(folder / f"{i:06d}.jpg", quality=95)
            lines[split].append(f"images/{split}/{i:06d}.jpg {label}")
    # NOAH ships train800val200 as its own copies of the 1000 training images.
    folder = root / name / "images" / "train800val200"
    folder.mkdir(parents=True, exist_ok=True)
    merged = []
    for i, line in enumerate(lines["train800"] + lines["val200"]):
        rel, label = line.rsplit(" ", 1)
        (folder / f"{i:06d}.jpg").write_bytes((root / name / rel).read_bytes())
        merged.append(f"images/train800val200/{i:06d}.jpg {label}")
    lines["train800val200"] = merged
    for split, rows in lines.items():
        (root / name / f"{split}.txt").write_text("\n".join(rows) + "\n")
