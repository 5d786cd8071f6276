"""The training loop: seeding, schedule, evaluation."""
from __future__ import annotations

import copy

import torch
from torch import nn

from petlbench.data.decode import TensorData
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import evaluate, fit, make_optimizer, make_scheduler


def tiny_data(n: int, classes: int, seed: int) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    half = torch.full((1, 3, 1, 1), 0.5)
    return TensorData(images, labels, half, half)


def trained(spec, seed: int):
    model, _, _ = build_model(spec, parse_method_spec("vpt_deep:tokens=2"), 4, seed=seed)
    cfg = TrainConfig(optimizer="adamw", lr=1e-2, epochs=2, warmup_epochs=1, batch_size=8)
    metrics = fit(model, tiny_data(24, 4, 0), tiny_data(16, 4, 1), cfg, torch.device("cpu"), seed=seed, progress=False)
    return model, metrics


def test_same_seed_same_run_other_seed_other_run(tiny_spec):
    a, metrics_a = trained(tiny_spec, seed=3)
    b, metrics_b = trained(tiny_spec, seed=3)
    c, _ = trained(tiny_spec, seed=4)
    assert metrics_a["train_loss_last_epoch"] == metrics_b["train_loss_last_epoch"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert metrics_a["steps"] == 2 * 3 and metrics_a["epochs"] == 2


def test_warmup_then_cosine_to_zero():
    param = nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(optimizer="sgd", lr=0.4, epochs=10, warmup_epochs=2)
    optimizer = make_optimizer(nn.ParameterList([param]), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=5)
    lrs = []
    for step in range(1, 51):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    warm, decay = lrs[:10], lrs[10:]
    assert all(x < y for x, y in zip(warm, warm[1:])), "warm-up rises"
    assert abs(lrs[9] - 0.4) < 1e-9, "peak lr at the end of warm-up"
    assert all(x >= y for x, y in zip(decay, decay[1:])), "cosine falls"
    assert decay[-1] < 1e-9, "reaches zero at the last step"
    assert abs(lrs[29] - 0.2) < 0.01, "half-way through the decay, half the lr"


def test_evaluate_counts_top1():
    class Constant(nn.Module):  # always predicts class 2
        def forward(self, x):
            return torch.tensor([0.0, 0.0, 1.0]).expand(len(x), -1)

    data = tiny_data(50, 3, 5)
    expected = (data.labels == 2).sum().item() / len(data)
    assert evaluate(Constant(), data, TrainConfig(eval_batch_size=7), torch.device("cpu")) == expected


def test_sgd_is_classical_momentum_as_in_vpt():
    """VPT trains with torch.optim.SGD(momentum=0.9): no Nesterov (timm's "sgd" would be Nesterov)."""
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9))
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(group["nesterov"] is False and group["momentum"] == 0.9 for group in optimizer.param_groups)


class RunsOutOfMemoryAbove(torch.nn.Module):
    """A layer that raises CUDA's out-of-memory error for batches larger than `limit` (the error, injected on CPU)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: batch {len(x)} > {self.limit})")
        return x


def test_out_of_memory_retries_with_micro_batches_and_the_same_result():
    from petlbench.engine.features import FeatureData
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = FeatureData(x, y)
    cfg = TrainConfig(optimizer="sgd", lr=0.5, epochs=3, warmup_epochs=1, batch_size=32)
    torch.manual_seed(1)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 3))
    squeezed = torch.nn.Sequential(copy.deepcopy(plain[0]), RunsOutOfMemoryAbove(limit=10))
    reference = fit(plain, data, data, cfg, torch.device("cpu"), seed=0, progress=False)
    retried = fit(squeezed, data, data, cfg, torch.device("cpu"), seed=0, progress=False)
    assert retried["micro_batches_per_step"] == 4, "32 -> 16 -> 8 per micro-batch"
    assert [r["micro_batch"] for r in retried["out_of_memory_retries"]] == [16, 8]
    torch.testing.assert_close(squeezed[0].weight, plain[0].weight, rtol=1e-5, atol=1e-6)
    assert retried["top1"] == reference["top1"] and "out_of_memory_retries" not in reference


def test_activation_checkpointing_gives_the_same_result(tiny_spec):
    from petlbench.data.decode import TensorData
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorData(images, torch.arange(24) % 4, torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))
    results = []
    for checkpointing in (False, True):
        model, _, _ = build_model(tiny_spec, parse_method_spec("full"), 4, seed=0)
        cfg = TrainConfig(epochs=2, warmup_epochs=0, batch_size=8, grad_checkpointing=checkpointing)
        results.append((fit(model, data, data, cfg, torch.device("cpu"), seed=0, progress=False), model))
    assert results[1][1].grad_checkpointing is True
    for a, b in zip(results[0][1].parameters(), results[1][1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resnets_train_channels_last():
    from petlbench.engine.train import memory_format
    from tests.families import tiny
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = TensorData(images, torch.arange(16) % 3, torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))
    model, _, _ = build_model(tiny("resnet"), parse_method_spec("bitfit"), 3, seed=0)
    fit(model, data, data, TrainConfig(epochs=1, warmup_epochs=0, batch_size=8), torch.device("cpu"), seed=0)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    vit, _, _ = build_model(tiny("vit"), parse_method_spec("bitfit"), 3, seed=0)
    assert memory_format(vit) == torch.contiguous_format
