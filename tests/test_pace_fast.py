"""PACE_fast (`pace:mode=fast`): one noisy pass per batch, the consistency term against each image's logits from its
previous visit (zeros at the first), in closed form on known tensors; micro-batches; and a run through the loop."""
from __future__ import annotations

import torch
from torch import nn

from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.params import build_model
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import parse_method_spec
from petlbench.suite import load_suite
from tests.conftest import write_tiny_suite
from tests.families import tiny

CE = nn.CrossEntropyLoss()


def build(spec="pace:mode=fast:sigma=1.2:lam=0.5"):
    method = parse_method_spec(spec)
    model, _, _ = build_model(tiny("vit"), method, 5, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return method, model.train()


def data(n=6):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)


def noisy_logits(model, x, seed):
    torch.manual_seed(seed)
    return model(x)


def test_the_loss_is_ce_plus_lam_times_the_distance_to_the_stored_logits():
    method, model = build()
    x, y = data()
    index = torch.tensor([4, 0, 2])
    # first visit: the stored logits are zeros, the term is lam x mean ||f||^2
    method.training_batch(index)
    torch.manual_seed(7)
    loss = method.training_loss(model, x[:3], y[:3], CE)
    f1 = noisy_logits(model, x[:3], 7)
    torch.testing.assert_close(loss, CE(f1, y[:3]) + 0.5 * f1.square().sum(-1).mean())
    # next epoch, another order: each image meets its own previous logits, without gradient through them
    method.training_batch(torch.tensor([2, 4, 0]))
    order = [2, 0, 1]  # positions of images 2, 4, 0 in the first batch
    torch.manual_seed(8)
    loss = method.training_loss(model, x[:3][order], y[:3][order], CE)
    f2 = noisy_logits(model, x[:3][order], 8)
    expected = CE(f2, y[:3][order]) + 0.5 * (f2 - f1[order].detach()).square().sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert not method.history.requires_grad, "the stored logits take no gradient"
    torch.testing.assert_close(method.history[[2, 4, 0]], f2.detach())
    assert method.history[1].abs().sum() == 0 and method.history[3].abs().sum() == 0, "unseen images: still zeros"


def test_micro_batches_take_their_own_slice_of_the_positions():
    method, model = build()
    x, y = data(4)
    method.training_batch(torch.tensor([3, 1, 0, 2]))
    torch.manual_seed(5)
    first = method.training_loss(model, x[:2], y[:2], CE)
    second = method.training_loss(model, x[2:], y[2:], CE)
    assert first.isfinite() and second.isfinite()
    torch.manual_seed(5)
    f_a, f_b = model(x[:2]), model(x[2:])
    torch.testing.assert_close(method.history[[3, 1, 0, 2]], torch.cat([f_a, f_b]).detach())


def test_fast_runs_one_pass_of_the_batch_and_pace_two():
    for mode, rows in (("fast", 3), ("pace", 6)):
        method, model = build(f"pace:mode={mode}")
        seen = []
        model.get_classifier().register_forward_hook(lambda m, i, o: seen.append(len(o)))
        x, y = data(3)
        method.training_batch(torch.arange(3))
        method.training_loss(model, x, y, CE)
        assert seen == [rows], mode


def test_a_run_records_the_mode_and_stores_every_training_image(tiny_tasks, tmp_path):
    suite = load_suite(str(write_tiny_suite(tmp_path / "suite.yaml", {"count": 6}, epochs=2)))
    spec = resolve_backbone(suite, tiny_tasks, None, {}, None, False)
    method = parse_method_spec("pace:mode=fast")
    plan = plan_one(suite, suite.tasks[0], method, spec, 0, {}, None, suite.protocol("tune", "search"), tiny_tasks)
    record = execute(plan, tmp_path / "out", torch.device("cpu"), RunCache(resolve_cache_dir(None)), False,
                     lambda line: None, "test", save_weights=False, save_samples=False)
    assert record["status"] == "success", record.get("error")
    assert record["method"]["options"]["mode"] == "fast"
    assert tuple(plan.method.history.shape) == (48, 6), "train800's 48 images, one row of 6 logits each"
    assert (plan.method.history.abs().sum(-1) > 0).all(), "every image visited"
