"""The offline demo: small synthetic tasks written in the NOAH VTAB-1k layout, and a tiny ViT
pre-trained on a different synthetic task, so transfer from frozen features means something.

A frozen *random* backbone would make every PETL comparison meaningless (its features are noise),
so `prepare` first pre-trains the demo backbone for a short while on an upstream task (shape x colour
of one object) and saves it as safetensors; the demo's downstream tasks then ask for things the
upstream task did not (counting, position), as VTAB's structured group does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
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


def write_task(root: Path, name: str, seed: int, sizes: dict[str, int] = SPLITS, kind: str | None = None) -> None:
    """Write one task in the NOAH layout: <task>/images/<split>/%06d.jpg and <split>.txt lists.

    `sizes` gives the images per split (train800, val200, test) and `kind` the generator (default:
    the task's name); tests write smaller tasks under other names.
    """
    sample = TASKS[kind or name]
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


def pretrain_upstream(path: Path, backbone: dict, seconds_log: Callable[[str], None]) -> dict:
    """Full training of the demo ViT on the upstream task, saved as safetensors (head dropped on load)."""
    from safetensors.torch import save_file

    from petlbench.backbone import BackboneSpec, preprocessing
    from petlbench.data.decode import TensorData
    from petlbench.params import build_model
    from petlbench.registry import get_method
    from petlbench.specs import TrainConfig
    from petlbench.engine.train import fit

    rng = np.random.default_rng(1234)
    samples = [upstream_sample(rng) for _ in range(UPSTREAM_IMAGES)]
    images = torch.from_numpy(np.stack([np.asarray(im).transpose(2, 0, 1) for im, _ in samples]))
    labels = torch.tensor([label for _, label in samples])
    spec = BackboneSpec(backbone["name"], backbone.get("args", {}), pretrained=False,
                        mean=backbone.get("mean"), std=backbone.get("std"))
    model, _, _ = build_model(spec, get_method("full")(), len(SHAPES) * len(COLOURS), seed=0)
    prep = preprocessing(model, spec)
    mean, std = (torch.tensor(prep[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    n_val = 1000
    train = TensorData(images[n_val:], labels[n_val:], mean, std)
    val = TensorData(images[:n_val], labels[:n_val], mean, std)
    cfg = TrainConfig(optimizer="adamw", lr=2e-3, weight_decay=0.05, epochs=8, warmup_epochs=1, batch_size=128)
    metrics = fit(model, train, val, cfg, torch.device("cpu"), seed=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    seconds_log(f"demo: upstream pre-training reached {metrics['top1']:.1%} on held-out upstream images")
    return {"upstream_val_top1": metrics["top1"], "upstream_images": UPSTREAM_IMAGES, "train": cfg.__dict__}


def prepare(root: Path, suite, log: Callable[[str], None] = print) -> None:
    """Make the demo data and the pre-trained demo backbone under `root`, once (idempotent)."""
    marker = root / "demo.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == VERSION:
        return
    start = time.perf_counter()
    log(f"demo: writing synthetic tasks to {root} and pre-training the demo backbone (once)")
    for i, task in enumerate(suite.tasks):
        if task.name not in TASKS:
            from petlbench.errors import UserError
            raise UserError(f"{suite.path}: demo task {task.name!r} unknown; demo tasks: {', '.join(TASKS)}")
        write_task(root, task.name, seed=100 + i)
    ckpt = root / suite.backbone["checkpoint"]
    info = pretrain_upstream(ckpt, suite.backbone, log)
    marker.write_text(json.dumps({"version": VERSION, "upstream": info, "seconds": time.perf_counter() - start}, indent=2))
    log(f"demo: ready in {time.perf_counter() - start:.0f}s")
