"""Split sanity for `data check`: a val split that lacks classes, a split whose classes are far from the test split's.

Warnings, never errors, not even with --strict (which makes leakage an error): VTAB-1k's official val200 lacks
classes of its many-class tasks by construction (google-research/task_adaptation#21: cifar 90 of 100 classes,
caltech101 86 of 102, flowers 90 of 102), so an error would refuse the benchmark itself. Each warning says what
chance alone gives, so a split drawn at random can be told from one that was not (sorted, blocked by class:
SSF#20 found CIFAR-100's val200 classes missing from train800).

The measure: total variation distance TV(p, q) = 1/2 sum_c |p_c - q_c| between a split's class frequencies p and
the test split's q, the share of the split's images that would have to change class to match test's. A split is
far when its TV exceeds max(TV_FLOOR, the 99th percentile of the TV of DRAWS random samples of the split's size
drawn from q). The percentile is what sampling noise alone reaches: 200 images over 397 classes (sun397's val200)
sit at TV ~0.6 from any frequencies by chance, 800 over 100 (cifar's train800) at ~0.14, and must not be flagged.
The floor: large splits (FGVC's thousands of images) have a chance TV of a few points, below the shifts their
datasets' own train/test partitions carry; a class prior off by less than 10% of its mass hardly moves top-1.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

TV_FLOOR = 0.10
DRAWS = 1000
PERCENTILE = 99
SHOWN_IDS = 8  # class ids named per warning


def split_warnings(labels: dict[str, list[int]], roles: dict[str, list[str]]) -> list[str]:
    """One line per problem. `labels`: split name -> the labels it lists (splits that could not be read absent);
    `roles`: the suite's splits per protocol role (train, val, trainval, test)."""
    test_names = [s for s in roles["test"] if s in labels]
    test = Counter(label for s in test_names for label in labels[s])
    if not test:
        return []
    lines = []
    train_names = [s for s in roles["train"] if s in labels and s not in roles["test"]]
    pool = test + Counter(label for s in train_names for label in labels[s])
    for split in (s for s in roles["val"] if s in labels and s not in roles["test"]):
        lines += missing_classes(split, Counter(labels[split]), pool, " or ".join(train_names + test_names))
    others = dict.fromkeys(s for role in ("train", "val", "trainval") for s in roles[role])
    for split in (s for s in others if s in labels and s not in roles["test"]):
        lines += far_from_test(split, Counter(labels[split]), test, "+".join(test_names))
    return lines


def missing_classes(split: str, have: Counter, pool: Counter, where: str) -> list[str]:
    missing = sorted(set(pool) - set(have))
    if not missing:
        return []
    n, total = sum(have.values()), sum(pool.values())
    chance = sum((1 - count / total) ** n for count in pool.values())  # classes a random n of the pool misses
    ids = ", ".join(map(str, missing[:SHOWN_IDS])) + (", ..." if len(missing) > SHOWN_IDS else "")
    return [f"{split} lacks {len(missing)} of the {len(pool)} classes that {where} hold (a random {n} images "
            f"would lack {chance:.1f}): {ids}"]


def far_from_test(split: str, have: Counter, test: Counter, test_name: str) -> list[str]:
    classes = sorted(set(have) | set(test))
    n = sum(have.values())
    p = np.array([have[c] for c in classes], dtype=float) / n
    q = np.array([test[c] for c in classes], dtype=float) / sum(test.values())
    tv = 0.5 * np.abs(p - q).sum()
    if tv <= TV_FLOOR:
        return []
    draws = np.random.default_rng(0).multinomial(n, q, size=DRAWS) / n
    chance = float(np.percentile(0.5 * np.abs(draws - q).sum(axis=1), PERCENTILE))
    if tv <= chance:
        return []
    return [f"{split}'s class distribution is far from {test_name}'s: total variation distance {tv:.2f} (random "
            f"draws of {n} images from {test_name}'s reach {chance:.2f} in {PERCENTILE} of 100)"]
