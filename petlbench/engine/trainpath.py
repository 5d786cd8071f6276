"""A run's training on the cheapest exact path: the full model; or, when nothing before block k trains or changed,
the blocks from k on cached activations (petlbench.engine.prefix); or, when only the head trains, the head on cached
pre-logit features (petlbench.engine.features). Each gives the numbers the full model would."""
from __future__ import annotations

import time
from functools import partial

import torch

from petlbench.data.decode import TensorData
from petlbench.engine import prefix
from petlbench.engine.features import MORE_THAN_HEAD, RunCache, why_not
from petlbench.engine.samples import TopK
from petlbench.engine.train import autocast_dtype, fit
from petlbench.plan import RunPlan
from petlbench.sidetower import feature_identity


def train_model(plan: RunPlan, model: torch.nn.Module, task_keys: list[str], train: TensorData,
                evaluation: TensorData, device: torch.device, progress: bool | None, cache: RunCache,
                keep: TopK | None = None, before_eval=None, scored: list[int] | None = None) -> dict:
    """The one training loop (petlbench.engine.train.fit) on the cheapest exact path; its metrics and `features`
    (which path, and why not a cheaper one)."""
    loop = partial(fit, cfg=plan.train, device=device, seed=plan.seed, progress=progress, keep=keep,
                   before_eval=before_eval, scored=scored)
    hooks = {"objective": plan.method.training_loss, "on_batch": plan.method.training_batch}
    reason = "off" if cache.features is None else why_not(model, task_keys, train)
    if reason is not None and reason != MORE_THAN_HEAD:
        return {**loop(model, train, evaluation, **hooks), "features": f"not cached: {reason}"}
    b, amp = plan.backbone, autocast_dtype(plan.train, device)
    identity = {"backbone": b.name, "args": b.args, "weights": b.weights, "preprocessing": plan.preprocessing(),
                **feature_identity(model)}  # a side tower (CoMo's DINO) is part of the head's input
    start = time.perf_counter()
    if reason == MORE_THAN_HEAD:
        found = prefix.prepare(model, b, plan.task.classes, train, identity, cache.features, device,
                               plan.train.eval_batch_size, amp)
        if isinstance(found, str):
            return {**loop(model, train, evaluation, **hooks), "features": f"not cached: {found}"}
        tail, on_train = found
        seconds = round(time.perf_counter() - start, 3)
        metrics = loop(tail, on_train, evaluation, evaluator=model, **hooks)
        return {**metrics, "features": f"cached before block {tail.first}", "features_time_s": seconds}
    on_train, on_eval = (cache.features.get(model, data, identity, device, plan.train.eval_batch_size, amp)
                         for data in (train, evaluation))
    seconds = round(time.perf_counter() - start, 3)
    metrics = loop(model.get_classifier(), on_train, on_eval)
    return {**metrics, "features": "cached", "features_time_s": seconds}
