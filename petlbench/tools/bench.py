"""`petlbench bench`: petlbench beside a reference loop written the way public PETL repos train, on the same
data, backbone, methods, optimizer and schedule, in one invocation: wall time of each, the ratio, both accuracies.

The reference loop is NOAH's / VPT's: a Dataset that opens and resizes every JPEG every epoch with PIL and
torchvision transforms, a DataLoader with one worker per core, float32, the model's full forward every step.
petlbench's side is `petlbench.run` with a cold decoded-image and feature cache (a temp folder), so its
one-time decoding and feature extraction are included. Data: the demo suite's `shapes` task (1000 training
images at the demo ViT's 32 px) and its pre-trained tiny ViT, unless another suite/task is given.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from petlbench.data.decode import INTERPOLATION
from petlbench.engine.preparers import prepare_suite
from petlbench.errors import UserError
from petlbench.data.layouts import find_task_dir, list_images
from petlbench.params import build_model, plan_text
from petlbench.plan import DATA_ROOT_ENV, method_label, plan_one, resolve_backbone, resolve_data_root
from petlbench.registry import parse_method_list
from petlbench.suite import load_suite
from petlbench.engine.threads import physical_cores
from petlbench.engine.train import effective_lr, make_optimizer, make_scheduler


class SameOrder(Sampler):
    """The permutation petlbench's loop draws each epoch (randperm from a generator seeded with the run's seed),
    so both loops see the same batches and their accuracies can be compared point for point."""

    def __init__(self, n: int, seed: int):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class SplitFiles(Dataset):
    """NOAH's loader: every __getitem__ opens the file, converts to RGB and applies the transforms."""

    def __init__(self, items, transform):
        self.items, self.transform = items, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


def reference(plan, prep: dict, seed: int) -> dict:
    """Train and test the way the public repos do; the same model, optimizer, schedule, epochs and batch size."""
    cfg, task_dir = plan.train, find_task_dir(plan.data_root, plan.task)
    size = tuple(prep["input_size"][-2:])
    transform = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode(prep["interpolation"])),
        transforms.ToTensor(), transforms.Normalize(prep["mean"], prep["std"])])
    start = time.perf_counter()
    model, _, _ = build_model(plan.backbone, plan.method, plan.task.classes, seed, **plan_text(plan))
    datasets = [SplitFiles([item for split in plan.protocol[key] for item in list_images(
        plan.suite.layout, task_dir, plan.task, split, plan.suite.split_names())], transform) for key in ("train_splits", "eval_splits")]
    # own generators: a DataLoader otherwise draws its workers' seed from the global RNG, which the model's
    # dropout also draws from (VPT-deep), and the two loops would stop drawing the same masks
    loaders = [DataLoader(datasets[0], batch_size=cfg.batch_size, sampler=SameOrder(len(datasets[0]), seed),
                          num_workers=physical_cores(), generator=torch.Generator().manual_seed(seed)),
               DataLoader(datasets[1], batch_size=cfg.eval_batch_size, num_workers=physical_cores(),
                          generator=torch.Generator().manual_seed(seed))]
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=len(loaders[0]))
    loss_fn, step = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), 0
    for _ in range(cfg.epochs):
        model.train()
        for images, labels in loaders[0]:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loaders[1]:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return {"top1": correct / total, "seconds": time.perf_counter() - start, "lr": effective_lr(cfg)}


def ours(plan, suite_arg: str, task: str, root: Path, train: dict, method_spec: str, protocol: str = "final",
         grid: dict | None = None) -> tuple[float, float]:
    """petlbench.run with cold caches: (seconds, test top-1)."""
    import petlbench
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = petlbench.run(suite=suite_arg, methods=method_spec, tasks=[task], data_root=str(root),
                                out=str(Path(tmp) / "results"), train=train, cache_dir=str(Path(tmp) / "cache"),
                                protocol=protocol, grid=grid, progress=False, log=lambda line: None, save_weights=False)
        seconds = time.perf_counter() - start
    (record,) = records
    if record["status"] != "success":
        raise UserError(f"bench: petlbench's {method_spec} run failed: {record['error']}")
    return seconds, record["metrics"]["test_top1"]


def bench(methods: str = "linear,full,adapter,vpt_deep", suite: str = "demo", task: str = "shapes",
          epochs: int = 10, data_root: str | None = None, grid: bool = True, log=print) -> list[dict]:
    if epochs < 1:
        raise UserError(f"--epochs: expected a positive integer, got {epochs}")
    the_suite = load_suite(suite)
    root = resolve_data_root(the_suite, data_root)
    prepare_suite(the_suite, root, log=log)
    if not root.is_dir():
        raise UserError(f"data root {root}: folder not found (from --data-root, the suite or ${DATA_ROOT_ENV})")
    (the_task,) = the_suite.select([task])
    spec = resolve_backbone(the_suite, root, None, None, None, False)
    train = {"epochs": epochs, "warmup_epochs": min(1, epochs - 1)}
    ours(None, suite, the_task.name, root, {"epochs": 1, "warmup_epochs": 0}, "linear")  # imports, not timed
    rows = []
    for method in parse_method_list(methods, the_suite.method_options):
        plan = plan_one(the_suite, the_task, method, spec, 0, train, None, the_suite.protocol("final"), root)
        if INTERPOLATION.get(plan.preprocessing()["interpolation"]) is None:
            raise UserError(f"bench: interpolation {plan.preprocessing()['interpolation']!r} unknown")
        label = method_label(method)
        seconds, top1 = ours(plan, suite, the_task.name, root, train, label)
        ref = reference(plan, plan.preprocessing(), seed=0)
        rows.append({"method": label, "petlbench_s": round(seconds, 2), "reference_s": round(ref["seconds"], 2),
                     "speed-up": round(ref["seconds"] / seconds, 2), "petlbench_top1": round(100 * top1, 1),
                     "reference_top1": round(100 * ref["top1"], 1)})
        log(f"bench: {rows[-1]}")
    if grid and any(m.name == "linear" for m in parse_method_list(methods)):
        one = next(r for r in rows if r["method"].startswith("linear"))
        seconds, top1 = ours(None, suite, the_task.name, root, train, "linear", protocol="tune")
        rows.append({"method": "linear, tune: 40-point VPT grid + final", "petlbench_s": round(seconds, 2),
                     "reference_s": None, "speed-up": None, "petlbench_top1": round(100 * top1, 1),
                     "reference_top1": None, "vs one linear run": round(seconds / one["petlbench_s"], 2)})
        log(f"bench: {rows[-1]}")
    return rows
