"""`petlbench data show`: one PNG per task, so a user sees at a glance that images, labels and balance are
what they expect: a tile per class with a few of its training images, the class index and (where the
layout gives one: FGVC's class folders) its name, and a bar chart of the class counts per split. A text
summary (images per split, classes, image sizes) goes to the terminal.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image, ImageOps

from petlbench.data.decode import open_rgb
from petlbench.errors import UserError
from petlbench.outputs import check_writable, written_whole
from petlbench.data.layouts import find_task_dir, list_images
from petlbench.specs import Task
from petlbench.suite import Suite
from petlbench.data import multilabel

THUMB = 64  # pixels per image in a tile
SIZE_SAMPLE = 500  # image headers read per task for the size summary


def class_names(items: list[tuple[Path, int]]) -> dict[int, str]:
    """A class's name when all its images sit in one folder of their own (FGVC: 001.Black_footed_Albatross)."""
    folders = defaultdict(set)
    for path, label in items:
        folders[label].add(path.parent.name)
    names = {label: next(iter(f)) for label, f in folders.items() if len(f) == 1}
    return names if len(set(names.values())) == len(names) > 1 else {}


def tile(paths: list[Path]) -> Image.Image:
    """A few images of one class side by side, each fitted into a THUMB x THUMB square."""
    strip = Image.new("RGB", (THUMB * max(len(paths), 1), THUMB), (255, 255, 255))
    for i, path in enumerate(paths):
        try:
            im = open_rgb(path)
        except UserError:
            continue  # data check names unreadable files; the picture shows what can be shown
        im = ImageOps.contain(im, (THUMB, THUMB))  # small images (VTAB's 32 px demo) are enlarged too
        strip.paste(im, (i * THUMB + (THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return strip


def image_sizes(paths: list[Path]) -> str:
    sizes = []
    for path in paths[:: max(1, len(paths) // SIZE_SAMPLE)][:SIZE_SAMPLE]:
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except Exception:
            continue
    if not sizes:
        return "no readable image"
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    return (f"{min(widths)}-{max(widths)} x {min(heights)}-{max(heights)} px, median "
            f"{statistics.median(widths):g} x {statistics.median(heights):g} ({len(sizes)} sampled)")


def show_task(suite: Suite, data_root: Path, task: Task, out: Path, per_class: int = 4) -> dict:
    """Write <out>/<suite>_<task>.png; return what it shows (counts, classes, sizes, tiles drawn)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_dir = find_task_dir(data_root, task)
    roles = {role: suite.splits[role] for role in ("train", "val", "test")}
    per_split = {split: list_images(suite.layout, task_dir, task, split, suite.split_names())
                 for splits in roles.values() for split in splits}
    train = [item for split in roles["train"] for item in per_split[split]]
    by_class = defaultdict(list)
    for path, label in ((p, c) for p, y in train for c in multilabel.classes_of(y)):  # multi-hot: under each class
        if len(by_class[label]) < per_class:
            by_class[label].append(path)
    names = class_names(train)
    cols = min(task.classes, 8)
    rows = math.ceil(task.classes / cols)
    fig = plt.figure(figsize=(cols * 0.45 * per_class + 0.5, rows * 0.75 + 3.2))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[0.75] * rows + [3.0], hspace=0.5, wspace=0.08)
    for label in range(task.classes):
        ax = fig.add_subplot(grid[label // cols, label % cols], label="class tile")
        ax.imshow(tile(by_class.get(label, [])))
        title = f"{label}: {names[label]}" if label in names else f"class {label}"
        ax.set_title(title[:28] + ("" if by_class.get(label) else " (no images)"), fontsize=6)
        ax.axis("off")
    bars = fig.add_subplot(grid[rows, :])
    width = 0.8 / len(per_split)
    for i, (split, items) in enumerate(per_split.items()):
        counts = Counter(c for _, label in items for c in multilabel.classes_of(label))
        bars.bar([c + i * width for c in range(task.classes)], [counts.get(c, 0) for c in range(task.classes)],
                 width=width, label=f"{split} ({len(items)})")
    bars.set_xlabel("class")
    bars.set_ylabel("images")
    bars.legend(fontsize=7)
    fig.suptitle(f"{suite.name} / {task.name}: {task.classes} classes, training images of split "
                 f"{'+'.join(roles['train'])}", fontsize=9)
    png = out / f"{suite.name}_{task.name}.png"
    with written_whole(png, "--out", "the picture") as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    tiles = sum(ax.get_label() == "class tile" for ax in fig.axes)
    plt.close(fig)
    return {"task": task.name, "png": str(png), "tiles": tiles, "classes": task.classes,
            "classes_seen": len({c for items in per_split.values() for _, y in items for c in multilabel.classes_of(y)}),
            "images": {split: len(items) for split, items in per_split.items()},
            "sizes": image_sizes([p for items in per_split.values() for p, _ in items])}


def run_show(suite: str | Suite, data_root: str | None, tasks: list[str] | None, out: str, per_class: int = 4) -> int:
    from petlbench.plan import resolve_data_root
    from petlbench.suite import load_suite

    if per_class < 1:
        raise UserError(f"--per-class: expected a positive integer, got {per_class}")
    the_suite = suite if isinstance(suite, Suite) else load_suite(suite)
    root = resolve_data_root(the_suite, data_root)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root, the suite or $PETLBENCH_DATA_ROOT)")
    selected = the_suite.select(tasks)
    check_writable(Path(out), "--out", "pictures")  # before any image is read
    for task in selected:
        shown = show_task(the_suite, root, task, Path(out), per_class)
        counts = ", ".join(f"{split} {n}" for split, n in shown["images"].items())
        print(f"{task.name}: {counts}; classes {shown['classes_seen']}/{task.classes}; sizes {shown['sizes']}; "
              f"-> {shown['png']}", flush=True)
    return 0
