"""GPS: k selected input connections per neuron, chosen from training gradients only; nothing else of a weight moves."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.engine.selection import Selection
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.methods.gps import SparseDelta, supcon
from petlbench.params import build_model, count_params
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.suite import load_suite
from tests.conftest import write_tiny_suite
from tests.families import tiny

CLASSES = 5


def random_batches(seed=0, n=20, size=32):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 3, size, size, generator=g), torch.arange(n) % CLASSES
    return [(images[:10], labels[:10]), (images[10:], labels[10:])]


def selected(spec="gps:k=3", batches=None, seed=0, family="vit"):
    method = parse_method_spec(spec)
    record = {}

    def hook(model):
        torch.manual_seed(seed)
        record.update(method.select(model, batches or random_batches()))
    model, counts, keys = build_model(tiny(family), method, CLASSES, seed=0, closed_form=hook)
    return model, counts, keys, record


def deltas(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, SparseDelta)}


def test_the_mask_holds_exactly_k_entries_per_row_of_each_weight_matrix():
    model, counts, _, record = selected("gps:k=3")
    layers = deltas(model)
    # the tiny ViT: the patch embedding and qkv, proj, fc1, fc2 of its 2 blocks, every one wrapped, the head not
    assert len(layers) == 9 and not isinstance(model.get_classifier(), SparseDelta)
    for name, m in layers.items():
        rows = m.layer.weight.shape[0]
        assert m.index.shape == (rows, 3)
        assert (m.index[:, 1:] > m.index[:, :-1]).all(), f"{name}: k distinct entries per row, sorted"
        assert record["layers"][name] == rows * 3
    entries = sum(m.delta.numel() for m in layers.values())
    biases = sum(m.layer.bias.numel() for m in layers.values())
    assert record["entries"] == entries and counts.trainable_excl_head == entries + biases
    assert not any(m.layer.weight.requires_grad for m in layers.values()), "the frozen weights stay frozen"


def test_the_selection_is_the_top_k_of_the_summed_gradient():
    """By hand on one batch with the cross-entropy score: |dL/dW| per row, its top k."""
    batches = random_batches()[:1]
    model, _, _, _ = selected("gps:k=2:loss=ce", batches)
    reference, _, _, _ = selected("gps:k=2:loss=ce", [(torch.zeros(1, 3, 32, 32), torch.zeros(1).long())])
    qkv = deltas(reference)["blocks.0.attn.qkv"]
    qkv.layer.weight.requires_grad_(True)
    reference.train()
    F.cross_entropy(reference(batches[0][0]), batches[0][1]).backward()
    expected = qkv.layer.weight.grad.abs().topk(2, dim=1).indices.sort(dim=1).values
    assert torch.equal(deltas(model)["blocks.0.attn.qkv"].index, expected)


def test_only_the_chosen_entries_move_in_a_training_step():
    model, _, _, _ = selected("gps:k=2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = {name: m.effective_weight().detach().clone() for name, m in deltas(model).items()}
    model.train()
    x, y = random_batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    make_optimizer(model, TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.01)).step()
    for name, m in deltas(model).items():
        moved = (m.effective_weight().detach() != weights[name]).reshape(len(m.index), -1)
        chosen = torch.zeros_like(moved).scatter_(1, m.index, True)
        assert moved.any() and not (moved & ~chosen).any(), f"{name}: only the selected entries move"
        assert torch.equal(m.layer.weight, before[f"{name}.layer.weight"]), "the frozen weight itself never moves"
    for key in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.norm1.bias", "norm.weight"):
        assert torch.equal(model.state_dict()[key], before[key]), f"{key} is frozen in GPS"


def test_the_selection_is_deterministic_per_seed_and_data():
    a, b, c, d = (selected("gps:k=2", random_batches(data), seed)[3]["sha256"]
                  for seed, data in ((0, 0), (0, 0), (1, 0), (0, 1)))
    assert a == b, "same seed, same data: the same mask"
    assert a != c and a != d, "the views are drawn from the seed; the scores from the data"


def test_merge_folds_the_delta_into_the_weights():
    model, _, _, _ = selected("gps:k=2")
    with torch.no_grad():
        for m in deltas(model).values():
            m.delta.normal_()
    model.eval()
    x = random_batches(2)[0][0]
    with torch.no_grad():
        expected = model(x)
        merged = parse_method_spec("gps").merge(model)
        assert not deltas(merged)
        torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)


def test_counts_on_vit_b16_in_closed_form():
    """k x rows of every weight matrix (768 + 12 x 6912 rows) plus their biases (83,712) on ViT-B/16."""
    spec = BackboneSpec("vit_base_patch16_224", {}, pretrained=False)
    rows = 768 + 12 * (3 * 768 + 768 + 3072 + 768)
    for k in (1, 20):
        counts = count_params(spec, parse_method_spec(f"gps:k={k}"), 100)
        assert counts.trainable_excl_head == k * rows + rows
    assert count_params(spec, parse_method_spec("gps"), 100).trainable_excl_head == 167_424


def test_swin_b_counts_in_closed_form():
    """Swin-B: one entry per row of its 100 weight matrices (110,208 rows), their biases (108,416) and the
    relative-position bias tables (63,544: the code's name rule trains them whole)."""
    spec = BackboneSpec("swin_base_patch4_window7_224", {}, pretrained=False)
    assert count_params(spec, parse_method_spec("gps"), 100).trainable_excl_head == 110_208 + 108_416 + 63_544


def test_on_swin_the_selection_keeps_k_per_row_and_the_bias_tables_train():
    from timm.models.swin_transformer import WindowAttention
    model, _, _, record = selected("gps:k=2:loss=ce", family="swin")
    layers = deltas(model)
    assert layers and all(m.index.shape[1] == 2 and len(set(m.index[0].tolist())) == 2 for m in layers.values())
    assert record["entries"] == sum(m.delta.numel() for m in layers.values())
    tables = [m.relative_position_bias_table for m in model.modules() if isinstance(m, WindowAttention)]
    assert tables and all(t.requires_grad for t in tables)
    frozen_tables = [m.relative_position_bias_table for m in
                     build_model(tiny("swin"), parse_method_spec("gps:k=2:bias=false"), CLASSES, seed=0)[0].modules()
                     if isinstance(m, WindowAttention)]
    assert not any(t.requires_grad for t in frozen_tables)


def test_k_above_the_inputs_of_a_neuron_is_refused():
    with pytest.raises(UserError, match="option 'k' is 49, above 48"):
        build_model(tiny("vit"), parse_method_spec("gps:k=49"), CLASSES, seed=0)


def test_supcon_matches_its_definition_on_two_images():
    """Two images of different classes, identical views: each anchor's only positive is its own other view."""
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features, labels, t = torch.cat([f, f]), torch.tensor([0, 1]), 0.5
    # anchor 0: logits to (view-2 of itself, image 1, image 1's view) = (1/t, 0, 0)
    expected = -(1 / t - torch.log(torch.exp(torch.tensor(1 / t)) + 2))
    torch.testing.assert_close(supcon(features, labels, t), expected)


def plan_for(tmp_path, data_root, seed=0):
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = load_suite(str(write_tiny_suite(tmp_path / "suite.yaml", {"count": 6}, epochs=1)))
    spec = resolve_backbone(suite, data_root, None, {}, None, False)
    return plan_one(suite, suite.tasks[0], parse_method_spec("gps:k=2"), spec, seed, {}, None,
                    suite.protocol("tune", "search"), data_root)


def test_runs_record_the_selection_made_from_train_only(tiny_tasks, tmp_path):
    """A tune search run trains on train800: with val's and test's labels rotated the selection cannot move."""
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_tasks, shifted)
    for split in ("test.txt", "val200.txt"):
        listing = shifted / "count" / split
        rows = [line.rsplit(" ", 1) for line in listing.read_text().splitlines()]
        listing.write_text("".join(f"{rel} {(int(label) + 1) % 6}\n" for rel, label in rows))
    records = []
    for root, seed in ((tiny_tasks, 0), (shifted, 0), (tiny_tasks, 1)):
        plan = plan_for(tmp_path / f"{root.name}{seed}", root, seed)
        records.append(execute(plan, tmp_path / f"out-{root.name}{seed}", torch.device("cpu"),
                               RunCache(resolve_cache_dir(None)), False, lambda line: None, "test",
                               save_weights=False, save_samples=False))
    a, b, other = records
    assert a["status"] == b["status"] == other["status"] == "success", (a.get("error"), b.get("error"))
    assert a["data"]["eval_digest"] != b["data"]["eval_digest"], "the evaluation splits differ"
    assert a["parameter_selection"] == b["parameter_selection"], "the selection depends on the training split only"
    assert a["parameter_selection"]["sha256"] != other["parameter_selection"]["sha256"], "another seed, other views"
    chosen = a["parameter_selection"]
    assert chosen["k"] == 2 and chosen["loss"] == "supcon" and chosen["entries"] == sum(chosen["layers"].values())
    assert a["params"]["trainable_excl_head"] == chosen["entries"] + sum(n // 2 for n in chosen["layers"].values()), \
        "the chosen entries (2 per row) and each wrapped layer's bias (1 per row) are what trains"


def test_the_hook_sees_one_seeded_epoch_of_the_training_data(tiny_tasks, tmp_path):
    plan = plan_for(tmp_path, tiny_tasks)
    train = RunCache(None, features=False).get(plan, plan.protocol["train_splits"], plan.preprocessing(), train=True)
    seen = []

    class Spy:
        def select(self, model, batches):
            seen.append([labels for _, labels in batches])
            return {"seen": sum(len(x) for x in seen[-1])}
    hook = Selection(Spy(), train, 16, seed=0, device=torch.device("cpu"))
    hook.fit(torch.nn.Linear(1, 1))
    hook.fit(torch.nn.Linear(1, 1))
    assert hook.record == {"seen": 48} and len(train) == 48, "train800's 48 images, once each"
    assert all(torch.equal(x, y) for x, y in zip(*seen)), "the same order for the same seed"
