"""A run's per-sample test outputs (written by petlbench.engine.samples), read back and measured: per-class
accuracy, calibration (ECE), and for two runs on the same test images their agreement, the accuracy of
their ensemble and of the oracle (either right), which PETL_Vision gives as the case for ensembling.

Definitions:
- predicted class: the first stored class (the run's argmax, from which its `metrics.test_top1` was counted);
- ECE (Naeini et al. 2015, Guo et al. 2017): the top-1 probabilities fall into 15 equal-width bins
  ((0, 1/15], ..., (14/15, 1]); ECE = sum over bins of |bin| / N * |accuracy(bin) - mean probability(bin)|,
  on the stored (float16) probabilities;
- ensemble: per image the mean of the two runs' probability vectors, each known only on its top-5 classes
  and counted as 0 elsewhere (an approximation: the mass outside a run's top-5 is dropped); its argmax
  (ties: the first run's ranking first) against the label.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petlbench.backbone import file_sha256
from petlbench.engine.samples import KEYS, samples_path
from petlbench.errors import UserError
from petlbench.records import current, read_record, record_files

BINS = 15


@dataclass(frozen=True)
class Samples:
    """One run's test outputs, in the test split's order."""
    classes: np.ndarray  # N x k classes, best first
    probs: np.ndarray  # N x k softmax probabilities (float32 from the stored float16)
    labels: np.ndarray  # N
    num_classes: int
    order: str  # the evaluated split files and their sha256: which images, in which order
    file: Path

    @property
    def predicted(self) -> np.ndarray:
        return self.classes[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def top1(self) -> float:
        """Counted as the run counted it (correct / images), so it equals the record's test_top1 exactly."""
        return int(self.correct.sum()) / max(len(self.labels), 1)


def load_samples(record_path: str | Path, record: dict | None = None) -> Samples:
    """The samples beside a record, verified against the sha256 the record holds (a mismatch, a missing
    or lost file, or a run without samples is one line naming the file)."""
    record_path = Path(record_path)
    record = read_record(record_path) if record is None else record
    if record is None:
        raise UserError(f"{record_path}: not a readable run record")
    entry, path = record.get("samples"), samples_path(record_path)
    if not isinstance(entry, dict):
        raise UserError(f"{record_path}: the run kept no samples (a tuning run, one made with --no-samples, "
                        "or one made before petlbench kept them)")
    if entry.get("lost"):
        raise UserError(f"{path}: samples lost when the run saved them ({entry['lost']})")
    if not path.is_file():
        raise UserError(f"{path}: samples file missing (deleted or moved since the run)")
    if file_sha256(path) != entry.get("sha256"):
        raise UserError(f"{path}: samples changed since the run (sha256 differs from the record's)")
    return read_samples(path)


def read_samples(path: str | Path) -> Samples:
    """A samples file as written, without checking it against a record."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise UserError(f"{path}: not a petlbench samples file (lacks {', '.join(missing)})")
            arrays = {k: z[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: cannot read samples ({type(exc).__name__}: {exc})") from None
    classes, probs, labels = arrays["classes"].astype(np.int64), arrays["probs"].astype(np.float32), arrays["labels"]
    if classes.ndim != 2 or probs.shape != classes.shape or labels.shape != (len(classes),):
        raise UserError(f"{path}: samples arrays of inconsistent shapes ({classes.shape}, {probs.shape}, {labels.shape})")
    return Samples(classes, probs, labels.astype(np.int64), int(arrays["num_classes"]), str(arrays["order"]), path)


def class_counts(s: Samples) -> np.ndarray:
    """Test images per class."""
    return np.bincount(s.labels, minlength=s.num_classes)


def per_class_accuracy(s: Samples) -> np.ndarray:
    """Accuracy per class (NaN for a class the test split lacks); weighted by class_counts it gives top-1."""
    counts = class_counts(s)
    right = np.bincount(s.labels[s.correct], minlength=s.num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, right / np.maximum(counts, 1), np.nan)


def ece(s: Samples, bins: int = BINS) -> float:
    """Expected calibration error of the top-1 probability, equal-width bins (see the module's docstring)."""
    confidence = s.probs[:, 0].astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi] per bin
    total, n = 0.0, len(confidence)
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() / n * abs(s.correct[inside].mean() - confidence[inside].mean())
    return total


def paired(a: Samples, b: Samples) -> None:
    """Two runs can be compared image by image only on the same images in the same order (and labels)."""
    if a.order != b.order or a.labels.shape != b.labels.shape or not np.array_equal(a.labels, b.labels):
        raise UserError(f"{b.file}: not scored on the same test images as {a.file} ({b.order} vs {a.order})")


def agreement(a: Samples, b: Samples) -> float:
    """Share of images where both runs predict the same class."""
    paired(a, b)
    return float(np.mean(a.predicted == b.predicted))


def oracle_accuracy(a: Samples, b: Samples) -> float:
    """Share of images that at least one of the two runs gets right."""
    paired(a, b)
    return float(np.mean(a.correct | b.correct))


def ensemble_accuracy(a: Samples, b: Samples) -> float:
    """Accuracy of the mean of both runs' probabilities, each restricted to its top-k (see the docstring)."""
    paired(a, b)
    candidates = np.concatenate([a.classes, b.classes], axis=1)  # N x 2k: every class with a known probability
    score = sum(((candidates[:, :, None] == s.classes[:, None, :]) * s.probs[:, None, :]).sum(axis=2) for s in (a, b))
    chosen = candidates[np.arange(len(candidates)), np.argmax(score, axis=1)]  # argmax: the first of equal scores
    return float(np.mean(chosen == a.labels))


def shown_runs(results: str | Path, suite: str | None = None) -> list[tuple[Path, dict]]:
    """(path, record) of the final runs a table shows (petlbench.records.current), of `suite` if given."""
    if not Path(results).exists():
        raise UserError(f"{results}: no such results folder")
    files = record_files(results)
    shown = {id(r) for r in current([r for _, r in files])}
    return [(p, r) for p, r in files if id(r) in shown and r.get("status") == "success"
            and (r.get("protocol") or {}).get("stage") != "search" and (suite is None or r.get("suite") == suite)]


def backbone_label(record: dict) -> str:
    """The backbone as tables name it (petlbench.report.summary.records_frame)."""
    return f"{record['backbone']['name']} ({record['backbone']['weights']})"


def ece_by_row(results: str | Path, suite: str | None = None) -> dict[tuple[str, str, str], tuple[float, bool]]:
    """(suite, method label, backbone) -> (ECE in %, mean over tasks of the mean over seeds; whether every run
    of the row kept samples), from the runs a table shows that kept them."""
    per_task: dict[tuple, list[float]] = {}
    lacking: set[tuple] = set()
    for path, r in shown_runs(results, suite):
        row = (r["suite"], r["method"]["label"], backbone_label(r))
        if not isinstance(r.get("samples"), dict):
            lacking.add(row)
            continue
        per_task.setdefault((*row, r["task"]), []).append(100 * ece(load_samples(path, r)))
    rows: dict[tuple, list[float]] = {}
    for (*row, _task), values in per_task.items():
        rows.setdefault(tuple(row), []).append(float(np.mean(values)))
    return {row: (float(np.mean(values)), row not in lacking) for row, values in rows.items()}


def per_class_table(results: str | Path, task: str, suite: str | None = None, fmt: str = "md") -> str:
    """Per-class test accuracy (%) of every method on `task`, mean over seeds: one row per class."""
    from tabulate import tabulate
    runs = [(p, r) for p, r in shown_runs(results, suite) if r.get("task") == task]
    if not runs:
        tasks = sorted({str(r.get("task")) for _, r in shown_runs(results, suite)})
        raise UserError(f"--per-class: no successful final run of task {task!r} under {results}"
                        + (f"; tasks here: {', '.join(tasks)}" if tasks else ""))
    parts = []
    for name in dict.fromkeys(r["suite"] for _, r in runs):
        mine = [(p, r) for p, r in runs if r["suite"] == name]
        several = len({backbone_label(r) for _, r in mine}) > 1
        accuracy: dict[str, list[np.ndarray]] = {}
        top1: dict[str, list[float]] = {}
        counts, lacking = None, 0
        for path, r in mine:
            if not isinstance(r.get("samples"), dict):
                lacking += 1
                continue
            s = load_samples(path, r)
            column = r["method"]["label"] + (f" [{backbone_label(r)}]" if several else "")
            accuracy.setdefault(column, []).append(per_class_accuracy(s))
            top1.setdefault(column, []).append(s.top1())
            counts = class_counts(s) if counts is None else counts
        if counts is None:
            raise UserError(f"--per-class: no run of {name}/{task} kept samples (runs made with --no-samples or "
                            "before petlbench kept them)")
        means = {c: seed_mean(v) for c, v in accuracy.items()}
        rows = [{"class": k, "test images": int(counts[k]),
                 **{c: "" if np.isnan(m[k]) else f"{100 * m[k]:.1f}" for c, m in means.items()}}
                for k in range(len(counts))]
        rows.append({"class": "mean of classes", "test images": int(counts.sum()),
                     **{c: f"{100 * np.nanmean(m):.1f}" for c, m in means.items()}})
        rows.append({"class": "all images (top-1)", "test images": int(counts.sum()),
                     **{c: f"{100 * np.mean(v):.1f}" for c, v in top1.items()}})
        seeds = {c: len(v) for c, v in accuracy.items()}
        notes = [f"runs per column (seeds): {', '.join(f'{c} {n}' for c, n in seeds.items())}; a class's cell is "
                 "the mean over seeds of its accuracy; empty: the test split lacks the class"]
        if lacking:
            notes.append(f"{lacking} run(s) kept no samples (--no-samples or an older petlbench) and are not shown")
        if fmt == "csv":
            parts.append(tabulate_csv(rows, name, task))
            continue
        title = f"suite {name}, task {task}: per-class test accuracy (%), last epoch, mean over seeds"
        if fmt == "latex":
            parts.append(f"% {title}\n" + tabulate(rows, headers="keys", tablefmt="latex_booktabs",
                                                   disable_numparse=True) + "\n" + "\n".join(f"% {n}" for n in notes))
        else:
            parts.append(f"### {title}\n\n" + tabulate(rows, headers="keys", tablefmt="github",
                                                        disable_numparse=True) + "\n\n" + "\n".join(notes))
    return "\n\n".join(parts) + "\n"


def seed_mean(arrays: list[np.ndarray]) -> np.ndarray:
    """Per class, the mean over the seeds that have the class in their test split (NaN where none has)."""
    stack = np.stack(arrays)
    seen = ~np.isnan(stack)
    return np.where(seen.any(axis=0), np.nansum(stack, axis=0) / np.maximum(seen.sum(axis=0), 1), np.nan)


def tabulate_csv(rows: list[dict], suite: str, task: str) -> str:
    import csv
    import io
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) + ["suite", "task"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "suite": suite, "task": task} for row in rows)
    return out.getvalue()
