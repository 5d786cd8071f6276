"""The domainbed layout: DomainBed's image folders, read for leave-one-domain-out domain generalisation.

    <data root>/<dataset>/<domain>/<class>/<image>      e.g. PACS/art_painting/dog/pic_001.jpg

(or the data root is the dataset folder itself). A task holds out one domain (`domain`, default its name) and
trains on others (`train_domains`, default every other domain of its dataset in the suite). Splits, with no
split file on disk:

- `test`: every image of the held-out domain (DomainBed's tables report the 80% "in" split of it,
  `env{test}_in_acc` in model_selection.py, keeping the other 20% for its oracle selection; petlbench has no
  oracle selection and tests the whole domain);
- `train` / `val`: each training domain split 80 / 20 exactly as DomainBed's trial 0 splits it
  (`train.py`: `misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(trial_seed=0, env_i))`, i.e. numpy's
  RandomState(md5-derived seed) shuffle of the domain's ImageFolder order, the first 20% held out), env_i the
  domain's index among the dataset's domains sorted (DomainBed's environments are the sorted folders). The split
  is fixed: run seeds change training, not the data (DomainBed's trial seed is separate too). `final` trains on
  train + val (every training-domain image) and tests the held-out domain; `tune` selects on val, DomainBed's
  "training-domain validation", never on the held-out domain.

Images in a domain are listed as torchvision's ImageFolder lists them (class folders sorted; files of every
sub-folder, sorted, with ImageFolder's extensions; hidden files left out). Labels are the class folders' sorted
order, and every domain of a task must hold the same class folders, `classes` of them; a domain whose class
folders are exactly 0 .. classes-1 is read by index (ImageNet-V2's published folders, ELEVATER as petlbench
lays it out), so its folder `7` is label 7.

A task's `class_subset` (ImageNet-A/-R: 200 of ImageNet's 1000 wnids) lets its held-out domain hold only those
class folders: they take the training domains' labels, and the test logits are restricted to them before the argmax
(`scored_labels`; CLIP's and CoOp's scoring of ImageNet-A/-R), so the accuracy is 200-way.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from petlbench.data import multilabel
from petlbench.errors import UserError
from petlbench.specs import Task

HOLDOUT_FRACTION = 0.2  # DomainBed's --holdout_fraction default
TRIAL_SEED = 0  # DomainBed's --trial_seed default
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def dataset_dir(data_root: Path, task: Task) -> Path:
    """<data root>/<dataset>, or the data root itself when it holds the task's domain folders."""
    named = data_root / task.dataset
    if not named.is_dir() and all((data_root / d).is_dir() for d in (task.domain, *task.train_domains)):
        return data_root
    return named


def class_folders(domain_dir: Path) -> list[str]:
    if not domain_dir.is_dir():
        raise UserError(f"{domain_dir}: domain folder not found")
    return sorted(e.name for e in os.scandir(domain_dir) if e.is_dir() and not e.name.startswith("."))


def by_index(folders: list[str]) -> bool:
    """Class folders named 0 .. n-1 (read by index, not by their sorted order: '10' sorts before '2')."""
    return sorted(folders) == sorted(str(i) for i in range(len(folders)))


def labels_of(folder_dir: Path, task: Task) -> dict[str, dict[str, int]]:
    """Per domain of the task (training domains, then the held-out one): class folder -> label; checked. A held-out
    domain with a `class_subset` holds just those folders, labelled as the training domains label them."""
    every = [*task.train_domains, task.domain]
    folders = {d: class_folders(folder_dir / d) for d in every}
    domains = every[:-1] if task.class_subset else every
    for d in domains:
        if len(folders[d]) != task.classes:
            raise UserError(f"{folder_dir / d}: {len(folders[d])} class folders, expected {task.classes} "
                            f"(task {task.name})")
    named = [d for d in domains if not by_index(folders[d])]
    for d in named[1:]:
        if folders[d] != folders[named[0]]:
            odd = sorted(set(folders[d]) ^ set(folders[named[0]]))[0]
            where = d if odd in folders[d] else named[0]
            raise UserError(f"{folder_dir / where / odd}: class folder not in every domain of task {task.name} "
                            f"(the domains {', '.join(named)} must hold the same class folders)")
    labels = {d: {f: (int(f) if d not in named else i) for i, f in enumerate(folders[d])} for d in domains}
    if task.class_subset:
        labels[task.domain] = subset_labels(folder_dir, task, folders[task.domain], labels[named[0]] if named else {})
    return labels


def subset_labels(folder_dir: Path, task: Task, folders: list[str], training: dict[str, int]) -> dict[str, int]:
    """The held-out domain's folders (exactly the task's `class_subset`) with the training domains' labels."""
    where = folder_dir / task.domain
    odd = sorted(set(folders) ^ set(task.class_subset))
    if odd:
        what = "is not in" if odd[0] in folders else "is missing, listed in"
        raise UserError(f"{where / odd[0]}: class folder {odd[0]!r} {what} the class_subset of task {task.name} "
                        f"({len(task.class_subset)} folders, from {task.class_subset_source})")
    stray = [f for f in folders if f not in training]
    if stray:
        raise UserError(f"{where / stray[0]}: class folder {stray[0]!r} is in no training domain of task {task.name} "
                        f"({', '.join(task.train_domains)}: named class folders, e.g. ImageNet's wnids)")
    return {f: training[f] for f in folders}


def scored_labels(folder_dir: Path, task: Task, splits: list[str]) -> list[int] | None:
    """The labels a prediction on `splits` may take when the held-out domain has a class subset (ImageNet-A/-R:
    the 1000-way logits restricted to its 200 classes, as CLIP's and CoOp's evaluations do); None: every class."""
    if not task.class_subset or "test" not in splits:
        return None
    folder_dir = Path(os.path.normpath(os.path.abspath(folder_dir)))
    return sorted(labels_of(folder_dir, task)[task.domain].values())


def domain_images(domain_dir: Path, labels: dict[str, int]) -> list[tuple[Path, int]]:
    """(image, label) of one domain in ImageFolder's order: classes sorted, then each class's files walked sorted."""
    items = []
    for cls in sorted(labels):
        for root, dirs, files in sorted(os.walk(domain_dir / cls, followlinks=True)):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            items += [(Path(root) / f, labels[cls]) for f in sorted(files)
                      if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return items


def seed_hash(*args) -> int:
    """DomainBed's misc.seed_hash: an int seed from the md5 of the arguments' repr."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def holdout(n: int, env_index: int) -> set[int]:
    """The positions DomainBed's trial-0 split holds out (its `out` split, our `val`) of a domain of n images."""
    keys = list(range(n))
    np.random.RandomState(seed_hash(TRIAL_SEED, env_index)).shuffle(keys)
    return set(keys[:int(n * HOLDOUT_FRACTION)])


def read_split(folder_dir: Path, task: Task, split: str) -> list[tuple[Path, int]]:
    """The (image, label) entries of `train`, `val` or `test` of a held-out-domain task."""
    if split not in ("train", "val", "test"):
        raise UserError(f"split {split!r}: the domainbed layout has the splits train, val and test")
    folder_dir = Path(os.path.normpath(os.path.abspath(folder_dir)))  # as layouts.inside: the cache slices by it
    if not folder_dir.is_dir():
        raise UserError(f"{folder_dir}: dataset folder not found (task {task.name}: looked for {task.dataset!r} "
                        f"under {folder_dir.parent}, or its domain folders there)")
    if task.multilabel:  # ELEVATER's VOC 2007: index files, not class folders (petlbench.data.multilabel)
        return multilabel.read_split(folder_dir, task, split)
    labels = labels_of(folder_dir, task)
    if split == "test":
        items = domain_images(folder_dir / task.domain, labels[task.domain])
    else:
        items = []
        for d in task.train_domains:
            images = domain_images(folder_dir / d, labels[d])
            out = holdout(len(images), task.domains.index(d))
            items += [item for i, item in enumerate(images) if (i in out) == (split == "val")]
    if not items:
        raise UserError(f"{folder_dir}: no images in split {split!r} of task {task.name} "
                        f"({'domain ' + task.domain if split == 'test' else 'domains ' + ', '.join(task.train_domains)})")
    return items


def listing(folder_dir: Path, task: Task, split: str) -> bytes:
    """What stands for a split file: the rule, then one `<path relative to the dataset folder>\\t<label>` line per
    image; its sha256 is the record's `split_files_sha256` entry, so an image added or moved is a change."""
    items = read_split(folder_dir, task, split)
    base = len(os.path.normpath(os.path.abspath(folder_dir)).rstrip(os.sep)) + 1
    head = (f"domainbed split={split} test={task.domain} train={','.join(task.train_domains)} "
            f"domains={','.join(task.domains)} holdout_fraction={HOLDOUT_FRACTION} trial_seed={TRIAL_SEED}\n")
    return (head + "".join(f"{str(p)[base:]}\t{label}\n" for p, label in items)).encode()


def describe(task: Task) -> dict:
    """The record's `data.domains`: which domain was held out and how the others were split."""
    subset = {"class_subset": {"classes": len(task.class_subset), "source": task.class_subset_source,
                               "sha256": hashlib.sha256("\n".join(task.class_subset).encode()).hexdigest()[:16],
                               "scoring": "test logits restricted to these classes (argmax among them)"}
              } if task.class_subset else {}
    return {"dataset": task.dataset, "test": task.domain, "train": list(task.train_domains),
            "holdout_fraction": HOLDOUT_FRACTION, "split": f"DomainBed trial_seed {TRIAL_SEED} (misc.split_dataset)",
            **subset}
