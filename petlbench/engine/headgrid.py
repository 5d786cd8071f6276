"""The tune grid at once: every (lr, weight decay) point of a head-only search trains together on cached
features, as one batched computation (G heads stacked in one tensor), each point with the arithmetic of
training it alone: the same initial head, the same batches in the same order, torch's SGD (classical
momentum) or AdamW update with timm's weight-decay filter (no decay on the bias) and the same warm-up +
cosine schedule. VPT's grid of 10 lr x 4 wd costs about one linear-probe run instead of forty.
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import nn

from petlbench.engine.execute import confirm, data_identity, execute, finish, new_record, report
from petlbench.engine.features import FeatureData, why_not
from petlbench.engine.threads import rebalance
from petlbench.engine.train import DIVERGED, EXPLODED, autocast_dtype, diverged, effective_lr, make_scheduler
from petlbench.errors import UserError
from petlbench.params import build_model, plan_text
from petlbench.records import is_finished, read_record
from petlbench.specs import TrainConfig

SHARED = ("optimizer", "momentum", "epochs", "warmup_epochs", "batch_size", "eval_batch_size", "label_smoothing",
          "grad_clip", "precision", "eval_every", "decay_rule")  # what every point must share to train together


def batchable(configs: list[TrainConfig]) -> bool:
    """Points that differ only in lr, weight decay (and lr_scale_batch, folded into the effective lr)."""
    first = configs[0]
    return len(configs) > 1 and first.optimizer in ("sgd", "adamw") and first.grad_clip is None and not first.eval_every and (
        first.decay_rule != "all") and all(  # timm's and VPT's rules leave a linear head's bias undecayed; "all" not
        all(getattr(c, key) == getattr(first, key) for key in SHARED) for c in configs)


def lr_factors(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The schedule's lr at every step for an effective lr of 1 (warm-up from 1e-3 and cosine scale with lr)."""
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(probe, dataclasses.replace(cfg, lr=1.0, lr_scale_batch=None), steps_per_epoch)
    factors = []
    for step in range(cfg.epochs * steps_per_epoch):
        factors.append(probe.param_groups[0]["lr"])
        scheduler.step_update(step + 1)
    return factors


def fit_heads(head: nn.Linear, train: FeatureData, test: FeatureData, configs: list[TrainConfig],
              device: torch.device, seed: int) -> list[dict]:
    """Train one copy of `head` per config on the same batches; per point the metrics `fit` returns, or an error."""
    cfg, g = configs[0], len(configs)
    train, test = train.to(device), test.to(device)
    weight = head.weight.detach().to(device).expand(g, -1, -1).clone().requires_grad_(True)
    bias = head.bias.detach().to(device).expand(g, -1).clone().requires_grad_(True)
    lrs = torch.tensor([effective_lr(c) for c in configs], device=device)
    decays = torch.tensor([c.weight_decay for c in configs], device=device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    factors = lr_factors(cfg, steps_per_epoch)
    state = {"step": 0, "buffers": None}
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="none")
    amp = autocast_dtype(cfg, device)
    order = torch.Generator().manual_seed(seed)
    first = torch.full((g,), float("nan"), device=device)
    alive = torch.ones(g, dtype=torch.bool, device=device)
    epoch_loss, seen, threads = first.clone(), 0, set()
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        threads.add(rebalance())
        losses = []
        for idx in torch.randperm(len(train), generator=order).split(cfg.batch_size):
            x, y = train.batch(idx.to(train.device))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = torch.einsum("nd,gcd->gnc", x, weight) + bias[:, None, :]
            loss = loss_fn(logits.float().flatten(0, 1), y.repeat(g)).view(g, -1).mean(dim=1)
            alive &= torch.isfinite(loss)
            if state["step"] == 0:
                first = loss.detach().clamp_min(1e-3)
            grad_w, grad_b = torch.autograd.grad(torch.where(alive, loss, 0).sum(), (weight, bias))
            with torch.no_grad():
                update(weight, bias, grad_w, grad_b, lrs * factors[state["step"]], decays, cfg, state)
            losses.append(loss.detach())
            seen += len(idx)
        epoch_loss = torch.stack(losses).mean(dim=0)
        alive &= ~(epoch_loss > EXPLODED * first)
    train_time = time.perf_counter() - start
    alive &= ~(epoch_loss > DIVERGED * first)
    top1 = evaluate_heads(weight.detach(), bias.detach(), test, cfg)
    results = []
    for i, c in enumerate(configs):
        if not bool(alive[i]):
            loss_i = float(epoch_loss[i])
            reason = (diverged(loss_i, cfg.epochs, float(first[i])) if math.isfinite(loss_i)
                      else "training loss became non-finite; lower the learning rate")
            results.append({"error": reason})
            continue
        results.append({"top1": float(top1[i]), "lr_effective": effective_lr(c), "train_loss_first_step": float(first[i]),
                        "train_loss_last_epoch": float(epoch_loss[i]), "epochs": cfg.epochs, "steps": state["step"],
                        "train_time_s": round(train_time / g, 3), "train_images_per_s": round(seen / max(train_time, 1e-9), 1),
                        "cpu_threads": sorted(threads), "features": "cached", "grid": f"trained at once with {g} points",
                        "head": {"weight": weight[i].detach().cpu(), "bias": bias[i].detach().cpu()}})
    return results


def update(weight, bias, grad_w, grad_b, lr, decay, cfg: TrainConfig, state: dict) -> None:
    """torch.optim.SGD (classical momentum) or AdamW, per point; weight decay on the weight only (timm's filter)."""
    lr_w, lr_b = lr.view(-1, 1, 1), lr.view(-1, 1)
    if state["buffers"] is None:
        state["buffers"] = [torch.zeros_like(weight), torch.zeros_like(bias), torch.zeros_like(weight),
                            torch.zeros_like(bias)]
    m_w, m_b, v_w, v_b = state["buffers"]
    state["step"] += 1
    if cfg.optimizer == "sgd":
        grad_w = grad_w + decay.view(-1, 1, 1) * weight
        if state["step"] == 1:
            m_w.copy_(grad_w), m_b.copy_(grad_b)
        else:
            m_w.mul_(cfg.momentum).add_(grad_w), m_b.mul_(cfg.momentum).add_(grad_b)
        weight.sub_(lr_w * m_w), bias.sub_(lr_b * m_b)
        return
    beta1, beta2, eps, t = 0.9, 0.999, 1e-8, state["step"]
    weight.mul_(1 - lr_w * decay.view(-1, 1, 1))
    for p, grad, m, v, lr_p in ((weight, grad_w, m_w, v_w, lr_w), (bias, grad_b, m_b, v_b, lr_b)):
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
        p.sub_(lr_p / (1 - beta1 ** t) * m / denom)


@torch.no_grad()
def evaluate_heads(weight: torch.Tensor, bias: torch.Tensor, data: FeatureData, cfg: TrainConfig) -> list[float]:
    correct = torch.zeros(weight.shape[0], dtype=torch.long, device=weight.device)
    for idx in torch.arange(len(data), device=data.device).split(cfg.eval_batch_size):
        x, y = data.batch(idx)
        logits = torch.einsum("nd,gcd->gnc", x, weight) + bias[:, None, :]
        correct += (logits.argmax(dim=2) == y[None]).sum(dim=1)
    return [count / max(len(data), 1) for count in correct.tolist()]  # as train.evaluate: exact fractions


def execute_grid(plans: list, out, device: torch.device, cache, progress, log, wheres: list[str]) -> list[dict]:
    """The search points of one task and method: at once when only the head trains on cached features and
    the points differ in lr and weight decay only; else one after another (petlbench.engine.execute)."""

    def one_by_one(todo):
        return {i: execute(plans[i], out, device, cache, progress, log, wheres[i], save_weights=False) for i in todo}

    base = plans[0]
    same_method = all(p.method.config == base.method.config for p in plans)
    few_shot = base.protocol.get("shots") or base.protocol.get("base_to_new")  # each point through execute, which
    # draws the shots (keeps the base classes) and records them
    multi = base.task.multilabel  # multi-hot labels train with binary cross-entropy: each point through execute
    if cache.features is None or not same_method or not batchable([p.train for p in plans]) or few_shot or multi:
        return list(one_by_one(range(len(plans))).values())
    try:
        prep = base.preprocessing()
        train = cache.get(base, base.protocol["train_splits"], prep, train=True)
        evaluation = cache.get(base, base.protocol["eval_splits"], prep, train=False)
    except UserError:
        return list(one_by_one(range(len(plans))).values())
    plans = [dataclasses.replace(p, data_id=data_identity(train, evaluation)) for p in plans]
    done = {}
    for i, plan in enumerate(plans):
        record = read_record(plan.record_path(out))
        if is_finished(record, plan.metric):
            log(f"{wheres[i]}: done before, skipped ({record['metrics'][plan.metric]:.1%})")
            done[i] = confirm(record, plan, out, log, wheres[i])
    pending = [i for i in range(len(plans)) if i not in done]
    if len(pending) < 2:
        return [done.get(i) or r for i, r in sorted({**done, **one_by_one(pending)}.items())]
    model, counts, task_keys = build_model(base.backbone, base.method, base.task.classes, base.seed,
                                           **plan_text(base))
    if why_not(model, task_keys, train) is not None:
        return [done.get(i) or r for i, r in sorted({**done, **one_by_one(pending)}.items())]
    start = time.perf_counter()
    b, amp = base.backbone, autocast_dtype(base.train, device)
    identity = {"backbone": b.name, "args": b.args, "weights": b.weights, "preprocessing": prep}
    on_train, on_eval = (cache.features.get(model, d, identity, device, base.train.eval_batch_size, amp)
                         for d in (train, evaluation))
    results = fit_heads(model.get_classifier(), on_train, on_eval, [plans[i].train for i in pending], device,
                        base.seed)
    records = dict(done)
    for i, result in zip(pending, results):
        plan, record = plans[i], new_record(plans[i], device, None)
        record.update(run_id=plan.run_id(), data_id=plan.data_id, params=counts.as_dict())
        record["data"].update(preprocessing=prep, train_images=len(train), eval_images=len(evaluation),
                              train_digest=train.digest, eval_digest=evaluation.digest)
        if "error" in result:
            record.update(status="failed", error=result["error"])
        else:
            metrics = {k: v for k, v in result.items() if k != "head"}
            metrics[plan.metric] = metrics.pop("top1")
            record.update(metrics=metrics, status="success")
        records[i] = report(finish(record, plan, out, device, start), log, wheres[i])
    return [records[i] for i in range(len(plans))]
