"""The CLIP demo's data: synthetic images of one coloured shape with captions ("a photo of a small red circle"),
for pre-training a tiny CLIP, and downstream tasks in the NOAH layout whose classes are named ("red circle").

Some colour x shape combinations (HELD_OUT) never appear in pre-training, neither as image nor as caption, so
zero-shot accuracy on them measures what CLIP papers claim: the text tower composes words it saw apart ("red",
"circle") into a classifier for a class it never saw.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from petlbench.data import demo
from petlbench.data.demo import SHAPES, canvas, draw_shape, finish

COLOURS = {"red": (230, 60, 50), "green": (60, 200, 80), "blue": (70, 110, 240), "yellow": (240, 210, 50),
           "purple": (170, 70, 220), "white": (235, 235, 235)}
COLOUR_NAMES = tuple(COLOURS)
# one combination per colour and per shape: every word is captioned, just never these pairs
HELD_OUT = frozenset((c, SHAPES[(i + 3) % len(SHAPES)]) for i, c in enumerate(COLOUR_NAMES))
COMBOS = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
SEEN = tuple(combo for combo in COMBOS if combo not in HELD_OUT)
CAPTIONS = ("a {colour} {shape}", "a photo of a {colour} {shape}.", "a {size} {colour} {shape}",
            "a {colour} {shape} on the {where}", "a photo of a {size} {colour} {shape} on the {where}.",
            "a {shape} that is {colour}", "a {colour} object", "a {shape}")
SPLITS = {"train800": 800, "val200": 200, "test": 600}
VERSION = 1  # bump when the generated data or the pre-training changes


def jitter(rng: np.random.Generator, rgb) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in rgb)


def draw(rng: np.random.Generator, colour: str, shape: str) -> tuple[Image.Image, str, str]:
    """One object of that colour and shape, at a random place and size; also its size and place words."""
    image, pen = canvas(rng)
    r = rng.uniform(24, 46)
    cx, cy = rng.uniform(r, 128 - r), rng.uniform(r, 128 - r)
    draw_shape(pen, shape, cx, cy, r, jitter(rng, COLOURS[colour]))
    where = ("left", "centre", "right")[min(2, int(cx * 3 / 128))] if rng.random() < 0.5 else \
        ("top", "middle", "bottom")[min(2, int(cy * 3 / 128))]
    return finish(image), "small" if r < 35 else "large", where


def caption_sample(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A pre-training pair: an image of a seen combination and one of several kinds of caption."""
    colour, shape = SEEN[rng.integers(len(SEEN))]
    image, size, where = draw(rng, colour, shape)
    template = CAPTIONS[rng.integers(len(CAPTIONS))]
    return image, template.format(colour=colour, shape=shape, size=size, where=where)


def task_classes(name: str) -> list[tuple[str, tuple[str, str] | None]]:
    """Each class of a downstream task: its name (the suite's `classnames:`) and the combinations it draws."""
    if name == "combos":
        return [(f"{c} {s}", (c, s)) for c, s in COMBOS]
    if name == "colours":
        return [(f"{c} object", None) for c in COLOUR_NAMES]
    if name == "shapes":
        return [(s, None) for s in SHAPES]
    raise KeyError(name)


TASKS = ("combos", "colours", "shapes")


def task_sample(rng: np.random.Generator, name: str) -> tuple[Image.Image, int]:
    """Every colour x shape combination, held-out ones included, labelled as the task asks."""
    colour, shape = COMBOS[rng.integers(len(COMBOS))]
    image, _, _ = draw(rng, colour, shape)
    label = {"combos": COMBOS.index((colour, shape)), "colours": COLOUR_NAMES.index(colour),
             "shapes": SHAPES.index(shape)}[name]
    return image, label


def write_task(root: Path, name: str, seed: int, sizes: dict[str, int] = SPLITS) -> None:
    """One task in the NOAH layout, as the demo writes its own."""
    demo.write_task(root, name, seed, sizes, sample=lambda rng: task_sample(rng, name))
