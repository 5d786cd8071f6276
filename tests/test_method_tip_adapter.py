"""Tip-Adapter, Tip-Adapter-F and CLIP-Adapter on a tiny random CLIP: alpha = 0 is zero-shot exactly, the cache is
the training images' normalised CLIP features (open_clip's own), the alpha/beta search reads val and never test,
closed-form parameter counts, and real runs through the CLI with what they record."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.closedform import ClosedForm
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.methods.tip_adapter import grid, search
from petlbench.params import build_model
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import parse_method_spec
from petlbench.suite import load_suite
from tests.conftest import petlbench_cli
from tests.test_clip import COUNTS, NAMES, TEMPLATES, suite_file, tiny_clip  # noqa: F401 (a fixture)


def built(path, spec_text, features=None, labels=None):
    method = parse_method_spec(spec_text)
    fit = (lambda model: method.fit_closed_form(model, features, labels)) if features is not None else None
    return build_model(BackboneSpec("clip:tiny", {}, checkpoint=str(path)), method, 3, seed=0, classnames=NAMES,
                       templates=TEMPLATES, closed_form=fit)


def pooled(model, x):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_alpha_zero_is_zeroshot_exactly(tiny_clip):
    _, path = tiny_clip
    zeroshot = built(path, "zeroshot").model.eval()
    torch.manual_seed(1)
    train_x, train_y = torch.randn(9, 3, 32, 32), torch.arange(9) % 3
    tip = built(path, "tip_adapter:init_alpha=0", pooled(zeroshot, train_x), train_y).model.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tip(x), zeroshot(x))
        tip.head.alpha.fill_(1.0)
        assert not torch.equal(tip(x), zeroshot(x)), "the cache counts once alpha > 0"


def test_closed_form_parameter_counts(tiny_clip):
    _, path = tiny_clip
    embed = 32  # the tiny CLIP's joint space (tiny.json)
    features, labels = torch.randn(7, 48), torch.arange(7) % 3
    tip = built(path, "tip_adapter", features, labels).counts
    assert tip.trainable == 0 and tip.added == 0, "the training-free cache is buffers, not parameters"
    tip_f = built(path, "tip_adapter_f", features, labels).counts
    assert tip_f.trainable == tip_f.trainable_excl_head == 7 * embed, "N_cache x E trainable keys"
    adapter = built(path, "clip_adapter").counts
    assert adapter.trainable == adapter.trainable_excl_head == 2 * embed * (embed // 4), "2 x E x E/4"
    assert built(path, "clip_adapter:reduction=2").counts.trainable_excl_head == 2 * embed * (embed // 2)


def test_clip_adapter_forward_by_hand(tiny_clip):
    _, path = tiny_clip
    model = built(path, "clip_adapter").model.eval()
    x = pooled(model, torch.randn(4, 3, 32, 32))
    head = model.head
    f = x @ head.proj.weight.T
    a = torch.relu(torch.relu(f @ head.adapter[0].weight.T) @ head.adapter[2].weight.T)
    expected = head.logit_scale * F.normalize(0.2 * a + 0.8 * f, dim=-1) @ head.classes.weight.T
    torch.testing.assert_close(head(x), expected, rtol=0, atol=1e-5)


def test_search_takes_the_first_best_of_the_official_grid(tiny_clip):
    _, path = tiny_clip
    torch.manual_seed(2)
    features, labels = torch.randn(12, 48), torch.arange(12) % 3
    head = built(path, "tip_adapter", features, labels).model.head
    val, val_labels = torch.randn(30, 48), torch.randint(0, 3, (30,))
    betas, alphas = grid(7, 200), grid(3, 20)
    assert betas[0] == alphas[0] == 0.1 and betas[-1] == pytest.approx(0.1 + 199 * 6.9 / 200)
    beta, alpha, accuracy = search(head, val, val_labels, betas, alphas)
    scores = []
    with torch.no_grad():
        f = head.image_features(val)
        for b in betas:
            for a in alphas:
                logits = head.zero_shot(f) + a * head.cache_logits(f, b)
                scores.append(((logits.argmax(-1) == val_labels).float().mean().item(), b, a))
    best = max(s[0] for s in scores)
    assert accuracy == best and next((b, a) for s, b, a in scores if s == best) == (beta, alpha)
    _, _, without = search(head, val, val_labels, [beta], [alpha], rows=torch.arange(6))
    assert 0 <= without <= 1, "a search over part of the cache runs too"


def plan_for(tmp_path, data_root, clip_path, method="tip_adapter"):
    suite = load_suite(str(suite_file(tmp_path / "suite")))
    spec = resolve_backbone(suite, data_root, "clip:tiny", {}, str(clip_path), False)
    return plan_one(suite, suite.tasks[0], parse_method_spec(method), spec, 0, {}, None, suite.protocol("final"),
                    data_root)


def test_cache_holds_the_training_images_normalised_clip_features(tiny_clip, tiny_tasks, tmp_path):
    reference, path = tiny_clip
    plan = plan_for(tmp_path, tiny_tasks, path)
    cache = RunCache(None, features=False)
    train = cache.get(plan, plan.protocol["train_splits"], plan.preprocessing(), train=True)
    closed = ClosedForm(plan, train, cache, torch.device("cpu"))
    model, _, _ = build_model(plan.backbone, plan.method, 6, 0, classnames=COUNTS, closed_form=closed.fit)
    images, labels = train.batch(torch.arange(len(train)))
    with torch.no_grad():
        expected = F.normalize(reference.encode_image(images), dim=-1)
    assert len(train) == 64, "train800val200: the 48 training and 16 validation images"
    torch.testing.assert_close(model.head.keys.weight, expected, rtol=0, atol=1e-5)
    assert torch.equal(model.head.values, F.one_hot(labels, 6).float())
    assert closed.record["cache_size"] == 64


def test_the_search_reads_val_and_never_test(tiny_clip, tiny_tasks, tmp_path):
    """The same task with the test split's labels rotated: the chosen alpha and beta cannot move."""
    _, path = tiny_clip
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_tasks, shifted)
    listing = shifted / "count" / "test.txt"
    rows = [line.rsplit(" ", 1) for line in listing.read_text().splitlines()]
    listing.write_text("".join(f"{rel} {(int(label) + 1) % 6}\n" for rel, label in rows))
    records = []
    for root in (tiny_tasks, shifted):
        plan = plan_for(tmp_path, root, path)
        records.append(execute(plan, tmp_path / f"out-{root.name}", torch.device("cpu"),
                               RunCache(resolve_cache_dir(None)), False, lambda line: None, "test",
                               save_weights=False, save_samples=False))
    a, b = records
    assert a["status"] == b["status"] == "success", (a.get("error"), b.get("error"))
    assert a["data"]["eval_digest"] != b["data"]["eval_digest"], "the test splits differ"
    assert a["closed_form"] == b["closed_form"], "alpha, beta and the val score depend on train and val only"
    assert a["closed_form"]["val_splits"] == ["val200"] and a["closed_form"]["searched"]
    assert a["closed_form"]["cache_rows_held_out"] == 16, "val200's images sit in train800val200: left out"
    assert a["metrics"]["epochs"] == 0 and a["params"]["trainable"] == 0


def test_runs_through_the_cli(tiny_clip, tiny_tasks, tmp_path):
    _, path = tiny_clip
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite_file(tmp_path / "s")), "--data-root", str(tiny_tasks),
                         "--out", str(out), "--methods", "tip_adapter,clip_adapter,tip_adapter_f", "--backbone",
                         "clip:tiny", "--checkpoint", str(path), "--train", "epochs=2", "--no-samples")
    assert proc.returncode == 0, proc.stderr
    records = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    by = {r["method"]["name"]: r for r in records}
    assert set(by) == {"tip_adapter", "clip_adapter", "tip_adapter_f"}
    assert all(r["status"] == "success" for r in records), [r.get("error") for r in records]
    tip, tip_f, adapter = by["tip_adapter"], by["tip_adapter_f"], by["clip_adapter"]
    assert tip["train"]["epochs"] == 0 and tip["params"]["trainable"] == 0
    chosen = tip["closed_form"]
    assert chosen["cache_size"] == 64 and 0.1 <= chosen["alpha"] < 3 and 0.1 <= chosen["beta"] < 7
    assert tip_f["params"]["trainable_excl_head"] == 64 * 32 and tip_f["metrics"]["epochs"] == 2
    assert (tip_f["train"]["optimizer"], tip_f["train"]["lr"], tip_f["train"]["weight_decay"]) == ("adamw", 1e-3, 0.01)
    assert tip_f["closed_form"]["searched"] and "alpha" in tip_f["closed_form"]
    assert adapter["params"]["trainable_excl_head"] == 2 * 32 * 8 and "closed_form" not in adapter
    assert adapter["backbone"]["args"]["drop_path_rate"] == 0.0
    weights = out.rglob("tip_adapter__*.safetensors")
    assert next(weights, None) is not None, "the cache is saved with the task"


def test_tip_adapter_f_trains_with_the_released_recipe(tiny_clip, tiny_tasks, tmp_path):
    import dataclasses
    from petlbench.plan import resolve_train
    _, path = tiny_clip
    plan = plan_for(tmp_path, tiny_tasks, path, "tip_adapter_f")
    train = resolve_train(plan.method, dataclasses.replace(plan.suite, train={}), {})
    assert (train.optimizer, train.lr, train.weight_decay, train.epochs, train.warmup_epochs, train.batch_size) == \
        ("adamw", 0.001, 0.01, 20, 0, 256)
    assert resolve_train(parse_method_spec("tip_adapter"), plan.suite, {}).epochs == 0, "training-free"
