"""SPT: the budget met exactly, the code's placement rule, selection from the training data only and per seed."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.engine.train import make_optimizer
from petlbench.errors import UserError
from petlbench.methods.spt import placement, tensors_of, wrapped
from petlbench.params import build_model, count_params
from petlbench.plan import plan_one, resolve_backbone
from petlbench.pooled import NONE, PooledLinear, structured_size
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.weights import same_architecture
from petlbench.suite import load_suite
from tests.conftest import write_tiny_suite
from tests.families import tiny

CLASSES = 5


def random_batches(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % CLASSES
    return [(images[:32], labels[:32]), (images[32:], labels[32:])]


def selected(spec="spt:budget=0.004", batches=None, seed=0):
    method, record = parse_method_spec(spec), {}

    def hook(model):
        torch.manual_seed(seed)
        record.update(method.select(model, batches or random_batches()))
    model, counts, keys = build_model(tiny("vit"), method, CLASSES, seed=0, closed_form=hook)
    return model, counts, keys, record


def test_structured_counts_are_the_codes_formula_at_vit_b16():
    """get_structured_param_num at r 8: LoRA r (in + out), adapter 2 r out + r + out."""
    assert structured_size("lora", 8, 768, 768) == 12_288 and structured_size("lora", 8, 768, 3072) == 30_720
    assert structured_size("adapter", 8, 768, 768) == 13_064 and structured_size("adapter", 8, 768, 3072) == 52_232


@pytest.mark.parametrize("structured", ["lora", "adapter"])
def test_the_budget_is_what_trains_on_vit_b16_before_any_data(structured):
    """Planning's count (meta device, no data) is the budget: the class token (768) and a pool of the rest."""
    spec = BackboneSpec("vit_base_patch16_224", {}, pretrained=False)
    for budget in (0.2, 0.4, 1.0):
        counts = count_params(spec, parse_method_spec(f"spt:structured={structured}:budget={budget}"), 100)
        assert counts.trainable_excl_head == round(budget * 1e6) and counts.added == round(budget * 1e6) - 768


@pytest.mark.parametrize("structured", ["lora", "adapter"])
def test_the_selection_fills_the_budget_exactly(structured):
    model, counts, _, record = selected(f"spt:structured={structured}:budget=0.004")
    assert counts.trainable_excl_head == 4000 == record["budget"]
    assert record["used"] == record["pool"] == 4000 - 48, "every pool value has its place"
    placed = sum(m.structured_size() for name, m in wrapped(model) if name in record["structured_modules"])
    layers = dict(wrapped(model))
    vectors = sum(tensors_of(layers[n.rsplit(".", 1)[0]])[n.endswith(".bias")].numel() for n in record["whole_vectors"])
    assert placed + vectors + record["unstructured_entries"] == record["pool"]


def test_the_selection_is_deterministic_per_seed_and_follows_the_data():
    (model_a, _, _, a), (model_b, _, _, b), (model_c, _, _, c) = (selected(seed=s) for s in (0, 0, 1))
    assert a == b and torch.equal(model_a.spt_pool.values, model_b.spt_pool.values), "same seed, same placement"
    assert a["structured_modules"], "at this budget some matrix is structured"
    assert c["sha256"] == a["sha256"] and not torch.equal(model_c.spt_pool.values, model_a.spt_pool.values), \
        "another seed, the same batches (no drop-path here): the same layout, other structured inits"
    assert selected(batches=random_batches(seed=7))[3]["sha256"] != a["sha256"], "other data, another placement"


def test_frozen_weights_move_only_at_the_selected_entries():
    model, _, _, record = selected("spt:budget=0.004")
    layers = dict(wrapped(model))
    before = {n: m._delta(m.layer.weight, m.weight_index, m._offsets[0]).detach().clone()
              for n, m in layers.items() if isinstance(m, PooledLinear)}
    frozen = {n: m.layer.weight.detach().clone() for n, m in layers.items() if isinstance(m, PooledLinear)}
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % CLASSES
    optimizer = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0))
    F.cross_entropy(model.train()(x), y).backward()
    optimizer.step()
    moved = 0
    for name, m in layers.items():
        if not isinstance(m, PooledLinear):
            continue
        assert torch.equal(m.layer.weight, frozen[name]), f"{name}: the frozen weight itself never moves"
        effective = m._delta(m.layer.weight, m.weight_index, m._offsets[0]).detach()
        changed = (effective != before[name]).flatten().nonzero().flatten()
        assert set(changed.tolist()) <= set(m.weight_index.tolist()), f"{name}: moved outside its entries"
        moved += len(changed)
        assert (m._offsets[2] != NONE) == (name in record["structured_modules"])
    assert moved > 0


def test_placement_follows_the_codes_rule_at_the_largest_tau_that_fits():
    """Two 4x5 matrices (structured cost 6, alpha 2: 3 top entries make one structured) and a 5-vector (beta 5:
    one top entry makes it whole); the code's loop over tau, counted here by brute force, against the search."""
    torch.manual_seed(0)
    scores = [torch.rand(4, 5), torch.rand(4, 5) / 2, torch.rand(5) / 4]
    costs, alpha, beta = [6, 6, None], 2.0, 5.0

    def count(tau):  # the code's rule, written out: per tensor its share of the top tau
        flat = torch.cat([s.flatten() for s in scores])
        top = torch.zeros_like(flat).index_fill(0, flat.topk(tau).indices, 1.0).split([20, 20, 5])
        total = 0
        for t, cost in zip(top, costs):
            s = int(t.sum())
            total += (cost if s >= cost / alpha else s) if cost is not None else (5 if s >= 5 / beta else s)
        return total
    for size in range(1, 18):
        placed = placement(scores, costs, alpha, beta, size)
        assert placed["tau"] == max(t for t in range(0, 46) if count(t) <= size)
        assert placed["count"] == size, "the remainder fills the budget exactly"
        flat = torch.cat([s.flatten() for s in scores])
        first = int(flat.topk(placed["tau"]).indices.lt(20).sum())  # the first matrix's share of the top tau
        assert (placed["kinds"][0] == "structured") == (first >= 6 / alpha)
        for kind, chosen in zip(placed["kinds"], placed["entries"]):
            assert kind == "entries" or len(chosen) == 0, "a structured or whole tensor has no separate entries"


def test_a_budget_beyond_the_backbone_and_a_rank_above_its_width_are_refused():
    with pytest.raises(UserError, match="option 'budget' is 0.4M"):
        build_model(tiny("vit"), parse_method_spec("spt"), CLASSES, seed=0)
    with pytest.raises(UserError, match="option 'rank' is 49, above 48"):
        build_model(tiny("vit"), parse_method_spec("spt:rank=49:budget=0.004"), CLASSES, seed=0)


def test_runs_select_on_the_training_split_only(tiny_tasks, tmp_path):
    """A tune search trains on train800: with val's and test's labels rotated the placement cannot move."""
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_tasks, shifted)
    for split in ("test.txt", "val200.txt"):
        listing = shifted / "count" / split
        rows = [line.rsplit(" ", 1) for line in listing.read_text().splitlines()]
        listing.write_text("".join(f"{rel} {(int(label) + 1) % 6}\n" for rel, label in rows))
    records = []
    for root in (tiny_tasks, shifted):
        folder = tmp_path / f"plan-{root.name}"
        folder.mkdir()
        suite = load_suite(str(write_tiny_suite(folder / "suite.yaml", {"count": 6}, epochs=1)))
        spec = resolve_backbone(suite, root, None, {}, None, False)
        plan = plan_one(suite, suite.tasks[0], parse_method_spec("spt:budget=0.004"), spec, 0, {}, None,
                        suite.protocol("tune", "search"), root)
        records.append(execute(plan, tmp_path / f"out-{root.name}", torch.device("cpu"),
                               RunCache(resolve_cache_dir(None)), False, lambda line: None, "test",
                               save_weights=False, save_samples=False))
    a, b = records
    assert a["status"] == b["status"] == "success", (a.get("error"), b.get("error"))
    assert a["parameter_selection"] == b["parameter_selection"]
    assert a["params"]["trainable_excl_head"] == 4000 == a["parameter_selection"]["budget"]


def test_spt_lora_merges_into_a_plain_vit_with_the_same_logits():
    model, _, _, record = selected("spt:budget=0.004")
    assert record["structured_modules"] and record["unstructured_entries"]
    with torch.no_grad():  # a "trained" pool: every value moved
        model.spt_pool.values.add_(0.05 * torch.randn_like(model.spt_pool.values))
    x = torch.randn(2, 3, 32, 32)
    expected = model.eval()(x)
    merged = parse_method_spec("spt").merge(model)
    plain = build_model(tiny("vit"), parse_method_spec("linear"), CLASSES, seed=0).model
    assert same_architecture(merged, plain) is None, "a plain timm ViT again"
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="SPT-Adapter cannot be merged"):
        parse_method_spec("spt:structured=adapter").merge(model)
