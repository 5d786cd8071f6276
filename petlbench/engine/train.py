"""The one training loop every method uses: AdamW or SGD, cosine schedule with warm-up (timm's
optimizer factory and scheduler), bf16 autocast on CUDA, seeded shuffling, last-epoch evaluation."""
from __future__ import annotations

import math
import time

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm.auto import tqdm

from petlbench.data.decode import TensorData
from petlbench.engine import multilabel
from petlbench.engine.decay import param_groups
from petlbench.specs import TrainConfig
from petlbench.engine.threads import rebalance


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def effective_lr(cfg: TrainConfig) -> float:
    return cfg.lr * cfg.batch_size / cfg.lr_scale_batch if cfg.lr_scale_batch else cfg.lr


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels-last for ResNets (measured here: 1.2-1.3x faster training, 1.2-1.5x evaluation, the same result);
    ConvNeXt showed no gain and ViTs have no 4-d activations to reorder."""
    from petlbench.backbones import family_of
    return torch.channels_last if family_of(model) == "resnet" else torch.contiguous_format


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    kwargs = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    # timm's "sgd" is Nesterov SGD; VPT (and torch.optim.SGD's default) use classical momentum: timm's "momentum".
    # The trained parameters go in as groups of cfg.decay_rule (petlbench.engine.decay), each with its own decay.
    opt = "momentum" if cfg.optimizer == "sgd" else cfg.optimizer
    groups = param_groups(model, cfg.decay_rule, cfg.optimizer, cfg.weight_decay)
    return create_optimizer_v2(groups, opt=opt, lr=effective_lr(cfg), weight_decay=0.0, **kwargs)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warm-up for cfg.warmup_epochs, then cosine decay to 0 at the last step (updated per step)."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    return CosineLRScheduler(optimizer, t_initial=total - warmup, warmup_t=warmup, warmup_lr_init=effective_lr(cfg) * 1e-3,
                             warmup_prefix=True, lr_min=0.0, t_in_epochs=False)


class Diverged(RuntimeError):
    """The training loss blew up: the run is recorded as failed with this reason, and the sweep goes on."""


DIVERGED = 3.0  # last-epoch loss above this many times the first step's (an untrained head's ~ln C): diverged
EXPLODED = 100.0  # an epoch's loss this far above it: stop now rather than train on to the last epoch


def diverging(loss: float, first: float, factor: float, chance: float) -> bool:
    """`factor` x the first step's loss, and worse than guessing (`chance`: ln C). A fresh head starts at ~ln C, so
    for it the factor alone decides; a model that starts near-perfect (a CLIP prompt method from zero-shot, batch 1:
    a first step of 0.016) may wander several-fold above that without diverging."""
    return loss > factor * first and loss > chance


def fit(model: nn.Module, train: TensorData, test: TensorData, cfg: TrainConfig, device: torch.device,
        seed: int, progress: bool | None = None, evaluator: nn.Module | None = None, keep=None,
        before_eval=None, objective=None, scored: list[int] | None = None, on_batch=None) -> dict:
    """Train for cfg.epochs and evaluate at the end (the number reported; no test-set selection).

    With cfg.eval_every = N the evaluation split is also scored every N epochs; that curve is recorded
    for comparison with papers that report the best epoch, and never used to choose anything.
    `evaluator` scores `test` instead of `model`: the full model whose tail trains on cached activations.
    `keep` (petlbench.engine.samples.TopK) collects the last evaluation's per-image top classes.
    `before_eval()` runs after training, before the final evaluation (a closed-form method's choice on val).
    `objective(model, images, labels, loss_fn)` is the batch's training loss (a method's `training_loss`); default CE.
    `scored`: the only classes a prediction on `test` may take (ImageNet-A/-R's 200 of 1000); None: all.
    `on_batch(index)` gets the batch's positions in `train` before its step (a method's `training_batch`).
    """
    layout = memory_format(model)
    model.to(device, memory_format=layout)
    if evaluator is None:
        evaluator = model
    else:
        evaluator.to(device, memory_format=memory_format(evaluator))
    train, test = train.to(device), test.to(device)
    if cfg.epochs:  # 0: a training-free method (zero-shot, a closed-form cache) is evaluated as built
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=math.ceil(len(train) / cfg.batch_size))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if multilabel.is_multilabel(train.labels):  # multi-hot labels (ELEVATER's VOC 2007): binary cross-entropy
        loss_fn = multilabel.loss
    amp = autocast_dtype(cfg, device)
    order = torch.Generator().manual_seed(seed)
    step, seen, epoch_loss, first_loss, curve, eval_time = 0, 0, float("nan"), None, [], 0.0
    chance = math.log(max(int(train.labels.max()) + 1, 2)) if len(train) else 0.0  # guessing's CE, ln C
    start = time.perf_counter()
    quiet = None if progress is None else not progress  # None: tqdm shows the bar only on a terminal
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", leave=False, disable=quiet)
    threads, accumulate, retries = set(), 1, []
    if cfg.grad_checkpointing and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)  # timm's: recompute activations in backward, less memory, same result
    for epoch in bar:
        threads.add(rebalance())  # another run started or ended on this machine: take the new share
        model.train()
        losses = []
        for idx in torch.randperm(len(train), generator=order).split(cfg.batch_size):
            images, labels = train.batch(idx.to(train.device), generator=order)  # augmentation drawn once per batch
            images = images.contiguous(memory_format=layout) if images.dim() == 4 else images
            while True:
                try:
                    if on_batch is not None:
                        on_batch(idx)
                    loss = backward(model, images, labels, accumulate, loss_fn, device, amp, objective)
                    break
                except torch.OutOfMemoryError:  # the same batch as smaller micro-batches: the same step, less memory
                    optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if len(idx) < 2 * accumulate:
                        raise
                    accumulate *= 2
                    retries.append({"step": step, "micro_batch": math.ceil(len(idx) / accumulate)})
            if first_loss is None:
                first_loss = max(loss.item(), 1e-3)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step_update(step)
            losses.append(loss.detach())
            seen += len(idx)
        epoch_loss = torch.stack(losses).float().mean().item()  # one device sync per epoch, not per step
        bar.set_postfix(loss=f"{epoch_loss:.3f}")
        if not math.isfinite(epoch_loss):
            raise Diverged(f"training loss became {epoch_loss} in epoch {epoch}; lower the learning rate")
        if diverging(epoch_loss, first_loss, EXPLODED, chance):
            raise Diverged(diverged(epoch_loss, epoch, first_loss))
        if cfg.eval_every and epoch % cfg.eval_every == 0 and epoch < cfg.epochs:
            tick = time.perf_counter()
            curve.append([epoch, evaluate(evaluator, test, cfg, device, scored=scored)])
            eval_time += time.perf_counter() - tick
    if first_loss is not None and diverging(epoch_loss, first_loss, DIVERGED, chance):
        raise Diverged(diverged(epoch_loss, cfg.epochs, first_loss))
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - start - eval_time
    if before_eval is not None:
        before_eval()
    top1 = evaluate(evaluator, test, cfg, device, keep, scored)
    named = {"map11": multilabel.map11(evaluator, test, cfg.eval_batch_size, device, amp)} if (
        multilabel.is_multilabel(test.labels)) else {}  # a multi-label task's own metric, beside its top-1 hits
    metrics = {"top1": top1, "lr_effective": effective_lr(cfg), "train_loss_first_step": first_loss,
               "train_loss_last_epoch": epoch_loss, "epochs": cfg.epochs, "steps": step,
               "train_time_s": round(train_time, 3), "train_images_per_s": round(seen / max(train_time, 1e-9), 1),
               "cpu_threads": sorted(threads), **named}
    if retries:  # out of memory: the effective batch (and the result) stayed, split into micro-batches
        metrics.update(micro_batches_per_step=accumulate, out_of_memory_retries=retries)
    if cfg.eval_every:
        metrics["eval_curve"] = curve + [[cfg.epochs, top1]]
    return metrics


def backward(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, accumulate: int, loss_fn,
             device: torch.device, amp: torch.dtype | None, objective=None) -> torch.Tensor:
    """Gradients of the batch's mean loss, from `accumulate` micro-batches (each weighted by its share);
    `objective(model, images, labels, loss_fn)` computes a micro-batch's loss (default: loss_fn on the logits)."""
    total = torch.zeros((), device=images.device)
    for chunk_x, chunk_y in zip(images.tensor_split(accumulate), labels.tensor_split(accumulate)):
        if len(chunk_y) == 0:
            continue
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            mean = loss_fn(model(chunk_x), chunk_y) if objective is None else objective(model, chunk_x, chunk_y, loss_fn)
            loss = mean * (len(chunk_y) / len(labels))
        loss.backward()
        total = total + loss.detach().float()
    return total


def only(scored: list[int], logits: torch.Tensor) -> torch.Tensor:
    """A (1, classes) mask of the scored classes."""
    mask = torch.zeros(1, logits.shape[1], dtype=torch.bool, device=logits.device)
    mask[0, scored] = True
    return mask


def diverged(loss: float, epoch: int, first: float) -> str:
    return (f"training diverged: loss {loss:.4g} at epoch {epoch}, {loss / first:.3g}x the first step's {first:.4g}; "
            "lower the learning rate")


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, cfg: TrainConfig, device: torch.device, keep=None,
             scored: list[int] | None = None) -> float:
    """Top-1 on `data`; out of memory, the evaluation batch halves (the answer does not depend on it).
    With `keep` (a TopK) every image's top classes are collected too, and top-1 is counted from them.
    With `scored`, the other classes' logits are -inf: the prediction is the argmax among those classes."""
    model.eval()
    amp, layout = autocast_dtype(cfg, device), memory_format(model)
    batch = cfg.eval_batch_size
    while True:
        try:
            correct = 0
            if keep is not None:
                keep.clear()
            for idx in torch.arange(len(data), device=data.device).split(batch):
                images, labels = data.batch(idx)
                images = images.contiguous(memory_format=layout) if images.dim() == 4 else images
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = model(images)
                if scored is not None:
                    logits = logits.float().masked_fill(~only(scored, logits), float("-inf"))
                predicted = logits.argmax(dim=1) if keep is None else keep.add(logits, labels)
                correct += multilabel.hits(predicted, labels).item()
            return correct / max(len(data), 1)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch = max(1, batch // 2)
