"""Multi-label tasks (ELEVATER's voc-2007-classification): a multi-hot label per image, trained with binary
cross-entropy, scored by ELEVATER's metric, the mean over classes of the 11-point interpolated average precision.

ELEVATER (Elevater_Toolkit_IC @ 00d0af7, vision_benchmark/evaluation/metric.py `map_11_points`) scores the softmax
over classes of the logits (clip_zeroshot_evaluator.py, full_model_finetune.py) with vision-evaluation's
MeanAveragePrecisionNPointsEvaluator(11) (microsoft/vision-evaluation @ 37491aa, evaluators.py): per class, sklearn's
precision-recall curve, at each recall threshold 1.0, 0.9, ..., 0.0 the largest precision at that recall or more,
their mean; classes with no positive image are left out; the mean over classes. Written here in numpy (sklearn is
no dependency of petlbench); tests/test_multilabel.py checks it on hand-worked cases. Its full fine-tuning trains
with BCEWithLogitsLoss, as `loss` does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

POINTS = 11


def is_multilabel(labels: torch.Tensor) -> bool:
    """Multi-hot labels (N x C) rather than class indices (N)."""
    return labels.dim() == 2


def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the logits, one independent decision per class (ELEVATER's fine-tuning)."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def hits(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many predictions are right: the class equals the label, or (multi-hot) is one of the image's labels."""
    if is_multilabel(labels):
        return labels.gather(1, predicted[:, None]).gt(0).sum()
    return (predicted == labels).sum()


def precision_recall(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's precision_recall_curve (recall decreasing, the point (recall 0, precision 1) last)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, targets = scores[order], targets[order]
    last = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]  # the last image of each distinct score
    tps = np.cumsum(targets)[last].astype(np.float64)
    fps = 1 + last - tps
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) != 0)
    recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def average_precision(scores: np.ndarray, targets: np.ndarray, points: int = POINTS) -> float:
    """N-point interpolated AP of one class: at each recall threshold, the best precision at that recall or more."""
    precision, recall = precision_recall(scores, targets)
    return float(np.mean([precision[recall >= t].max() for t in np.linspace(1, 0, points, endpoint=True).tolist()]))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, points: int = POINTS) -> float:
    """Mean over the classes with a positive image of their N-point interpolated AP (a fraction in [0, 1])."""
    targets = np.asarray(targets) > 0
    present = np.where(targets.any(axis=0))[0]
    if present.size == 0:
        return 0.0
    return float(np.mean([average_precision(scores[:, c], targets[:, c], points) for c in present]))


@torch.no_grad()
def map11(model: torch.nn.Module, data, batch_size: int, device: torch.device, amp) -> float:
    """The 11-point mAP of `model` on multi-label `data`, from the softmax over classes as ELEVATER scores it."""
    model.eval()
    scores, targets = [], []
    for idx in torch.arange(len(data), device=data.device).split(batch_size):
        images, labels = data.batch(idx)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(images)
        scores.append(torch.softmax(logits.float(), dim=1).cpu())
        targets.append(labels.cpu())
    return mean_average_precision(torch.cat(scores).numpy().astype(np.float64), torch.cat(targets).numpy())
