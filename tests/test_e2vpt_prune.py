"""E2VPT's pruning and rewind: the official cut counts, the lowest-scored gates cut, cut prompts without effect on
the logits, the rewind's initialisation, the counts after pruning, and a whole run through the engine."""
from __future__ import annotations

import pytest
import torch

from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.errors import UserError
from petlbench.methods.e2vpt import (MaskedInsertPrompts, PromptMask, cut_count, lowest, prompt_mask)
from petlbench.params import build_model
from petlbench.plan import plan_one, resolve_backbone
from petlbench.registry import parse_method_spec
from petlbench.suite import load_suite
from tests.conftest import write_tiny_suite
from tests.families import tiny

CLASSES = 5
SPEC = "e2vpt:tokens=4:kv_tokens=2:prune_tokens=50:prune_pieces=50:dropout=0"  # width 48: 16 pieces of 3 channels


def batches(seed=0, n=20):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % CLASSES
    return [(images[:10], labels[:10]), (images[10:], labels[10:])]


def build(spec=SPEC, seed=0):
    method = parse_method_spec(spec)
    return method, build_model(tiny("vit"), method, CLASSES, seed=seed)


def trained_like(model, seed=1):
    """Random prompt and gate values, as a first training would leave them (the gates train too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() <= 2 and p.shape[0] == 4 else 0.0))
    return model


def test_cut_counts_are_the_officials():
    """Trainer.determine_mask_sequence at the released percentages 10-90: int(n x % / 100), 1 prompt, 4 pieces kept."""
    assert [cut_count(16, p, 4) for p in range(10, 100, 10)] == [1, 3, 4, 6, 8, 9, 11, 12, 12]
    assert [cut_count(10, p, 1) for p in range(10, 100, 10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [cut_count(5, p, 1) for p in range(10, 100, 10)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert lowest([0.3, -1.0, 0.3, 0.0, -1.0], 3) == [1, 3, 4], "ascending, ties by index"


def test_one_mask_for_all_layers_registered_once():
    _, (model, counts, keys) = build()
    inserts = [m for m in model.modules() if isinstance(m, MaskedInsertPrompts)]
    assert len(inserts) == 2 and all(m.shared[0] is inserts[0].mask for m in inserts)
    assert len([m for m in model.modules() if isinstance(m, PromptMask)]) == 1
    assert sum(".mask." in k for k in model.state_dict()) == 2, "tokens and pieces, once"
    # before pruning the gates train: prompts 2 x 4 x 48, kv 2 x 3 x 2 x 16, gates 4 + 4 x 16
    assert counts.trainable_excl_head == 2 * 4 * 48 + 2 * 3 * 2 * 16 + 4 + 4 * 16


def test_prune_cuts_the_lowest_gradient_scores_and_is_deterministic():
    method, (model, _, _) = build()
    trained_like(model)
    first = method.prune(model, batches())
    again = method.prune(model, batches())
    assert first == again, "the same model and batches: the same scores and cut"
    assert len(first["tokens_cut"]) == 2 and all(len(c) == 8 for c in first["pieces_cut"])
    # the scores are the gates' loss gradient, mean over the batches
    mask = prompt_mask(model)
    grads = []
    for images, labels in batches():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        grads.append(mask.tokens.grad.clone())
    torch.testing.assert_close(torch.tensor(first["token_scores"]), torch.stack(grads).mean(0))
    order = sorted(range(4), key=lambda i: first["token_scores"][i])
    assert first["tokens_cut"] == sorted(order[:2])
    other = method.prune(model, batches(seed=5))
    assert other["token_scores"] != first["token_scores"], "other data, other scores"


def test_cut_prompts_and_pieces_do_not_touch_the_logits():
    method, (model, _, _) = build()
    pruned = method.prune(trained_like(model), batches())
    _, (fresh, _, _) = build()
    method.rewind(fresh, pruned)
    fresh.eval()
    x = torch.randn(3, 3, 32, 32)
    before = fresh(x)
    cut_token, kept_token = pruned["tokens_cut"][0], next(i for i in range(4) if i not in pruned["tokens_cut"])
    cut_piece = pruned["pieces_cut"][kept_token][0]
    channels = [c for c in range(48) if c % 16 == cut_piece]  # piece j: channels j, j + 16, j + 32
    inserts = [m for m in fresh.modules() if isinstance(m, MaskedInsertPrompts)]
    with torch.no_grad():
        for m in inserts:
            m.prompts[0, cut_token] += 10.0
            m.prompts[0, kept_token, channels] += 10.0
    torch.testing.assert_close(fresh(x), before, rtol=0, atol=0)
    with torch.no_grad():
        inserts[1].prompts[0, kept_token, [c for c in range(48) if c not in channels]] += 1.0
    assert (fresh(x) - before).abs().max() > 1e-3, "a kept piece of a kept prompt moves the logits"


def test_rewind_restarts_from_the_first_initialisation_with_the_gates_fixed():
    method, (model, _, _) = build()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = method.prune(trained_like(model), batches())
    _, (fresh, counts, keys) = build()
    method.rewind(fresh, pruned)
    assert {"blocks.0.0.mask.tokens", "blocks.0.0.mask.pieces"} <= set(keys), "the saved task weights keep the cut"
    mask = prompt_mask(fresh)
    assert not mask.tokens.requires_grad and not mask.pieces.requires_grad
    assert mask.tokens.tolist() == [0.0 if i in pruned["tokens_cut"] else 1.0 for i in range(4)]
    for name, value in fresh.state_dict().items():
        if ".mask." not in name:
            assert torch.equal(value, initial[name]), name
    assert pruned["tokens_kept"] == 2 and pruned["pieces_kept_per_token"] == 8
    assert pruned["prompt_values_kept_per_layer"] == 2 * 8 * 3


def test_pruning_needs_prompts_and_pieces_dividing_the_width():
    with pytest.raises(UserError, match="pieces=5 dividing the width 48"):
        build("e2vpt:prune_tokens=50:pieces=5")
    with pytest.raises(UserError, match="tokens > 0"):
        build("e2vpt:tokens=0:prune_pieces=50")
    _, (model, _, _) = build("e2vpt:tokens=4")
    assert not [m for m in model.modules() if isinstance(m, PromptMask)], "no pruning: the origin e2vpt, no gates"


def test_a_run_trains_prunes_rewinds_and_records_the_cut(tiny_tasks, tmp_path):
    suite = load_suite(str(write_tiny_suite(tmp_path / "suite.yaml", {"count": 6}, epochs=1)))
    spec = resolve_backbone(suite, tiny_tasks, None, {}, None, False)
    records = []
    for seed in (0, 0, 1):
        plan = plan_one(suite, suite.tasks[0], parse_method_spec(SPEC), spec, seed, {}, None,
                        suite.protocol("tune", "search"), tiny_tasks)
        records.append(execute(plan, tmp_path / f"out{len(records)}", torch.device("cpu"),
                               RunCache(resolve_cache_dir(None)), False, lambda line: None, "test",
                               save_weights=False, save_samples=False))
    a, b, c = records
    assert a["status"] == "success", a.get("error")
    cut = a["pruning"]
    assert cut["tokens_cut"] == b["pruning"]["tokens_cut"] and cut["pieces_cut"] == b["pruning"]["pieces_cut"]
    top1 = [k for k in a["metrics"] if k.endswith("top1")]
    assert top1 and all(a["metrics"][k] == b["metrics"][k] for k in top1), "the same seed: the same run"
    assert cut["token_scores"] != c["pruning"]["token_scores"], "another seed, another first training"
    assert cut["first_training"]["epochs"] == 1 and len(cut["tokens_cut"]) == 2
    # after the rewind the gates are fixed: prompts, key-value prompts and the head train
    assert a["params"]["trainable_excl_head"] == 2 * 4 * 48 + 2 * 3 * 2 * 16
    assert a["method"]["options"]["prune_tokens"] == 50
