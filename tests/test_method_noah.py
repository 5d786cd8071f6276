"""noah: NOAH's subnet of prompts, fused-qkv LoRA and adapters (methods/noah.py)."""
from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
import yaml

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.adapter import AdaptedDropPath
from petlbench.methods.noah import FusedLoRA, TailPrompts, count, released_subnets
from petlbench.params import build_model, count_params
from petlbench.plan import method_label
from petlbench.prompts import InsertPrompts
from petlbench.registry import parse_method_spec
from petlbench.specs import Task
from petlbench.tools.noah_subnets import render
from tests.families import tiny

ROOT = Path(__file__).resolve().parents[1]
VIT_B = BackboneSpec("vit_base_patch16_224", pretrained=False)


def build(spec: str, num_classes=5):
    return build_model(tiny("vit"), parse_method_spec(spec), num_classes, seed=0)[0]


def subnet_file(tmp_path, sizes, name="subnet.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sizes))
    return path


def test_released_cifar100_count_is_the_closed_form():
    """Per block p D + 4 r D + (2 a D + a + D if a): the released cifar100 subnet on ViT-B/16 (D = 768)."""
    sizes = released_subnets()["vtab1k"]["cifar100"]
    p, r, a = sum(sizes["prompts"]), sum(sizes["lora"]), sizes["adapter"]
    by_hand = 768 * p + 4 * 768 * r + sum(2 * 768 * k + k + 768 for k in a if k)
    counts = count_params(VIT_B, parse_method_spec("noah:subnet=cifar100"), 100)
    assert counts.trainable_excl_head == by_hand == count(sizes, 768) == 320_330


def test_released_mean_is_the_papers_figures():
    """The 19 released subnets average 0.360M (the Convpass report's NOAH figure, 0.36M); NOAH's own counter also
    counts the model-level prompts and their position embedding that block 0 replaces (p_0 D + 100 D): 0.44M,
    beside NOAH Table 1's 0.43M."""
    table = released_subnets()["vtab1k"]
    assert len(table) == 19
    mean = sum(count(s, 768) for s in table.values()) / 19
    official = sum(count(s, 768) + 768 * (s["prompts"][0] + 100) for s in table.values()) / 19
    assert round(mean / 1e6, 2) == 0.36 and round(official / 1e6, 2) == 0.44


def test_shipped_subnets_are_the_generators_output():
    shipped = (ROOT / "benchmarks/subnets/noah.yaml").read_text(encoding="utf-8")
    assert shipped == render(ROOT / "tests/data/paper_settings/noah_subnets.csv")


def test_default_is_uniform_and_counts_every_module():
    model = build("noah")
    shapes = sorted(tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad)
    # tiny ViT: 2 blocks of width 48; 5 prompts, LoRA A 5 x 48 and B 144 x 5, adapter 48 -> 5 -> 48; head 5 x 48
    assert shapes == sorted([(1, 5, 48)] * 2 + [(5, 48), (144, 5)] * 2 + [(5, 48), (5,), (48, 5), (48,)] * 2
                            + [(5, 48), (5,)])


def test_noah_yaml_file_is_read_as_noahs_retrain_section(tmp_path):
    sizes = released_subnets()["vtab1k"]["svhn"]
    noah = {"SUPERNET": {"DEPTH": 12}, "RETRAIN": {"VISUAL_PROMPT_DIM": sizes["prompts"], "LORA_DIM": sizes["lora"],
                                                   "ADAPTER_DIM": sizes["adapter"], "PREFIX_DIM": [0] * 12}}
    path = subnet_file(tmp_path, noah)
    assert parse_method_spec(f"noah:subnet={path}").sizes() == sizes
    noah["RETRAIN"]["PREFIX_DIM"][3] = 10
    with pytest.raises(UserError, match="PREFIX_DIM"):
        parse_method_spec(f"noah:subnet={subnet_file(tmp_path, noah)}").sizes()


def test_the_files_content_is_the_run_identity(tmp_path):
    sizes = {"prompts": [1, 2], "lora": [0, 3], "adapter": [4, 0]}
    path = subnet_file(tmp_path, sizes)
    method = parse_method_spec(f"noah:subnet={path}")
    before = method.identity()
    assert before["resolved"]["lora"] == [0, 3]
    path.write_text(yaml.safe_dump({**sizes, "lora": [0, 4]}))
    after = method.identity()
    assert after != before and after["resolved"]["lora"] == [0, 4]
    assert method_label(method) == f"noah:subnet={path}"


def test_released_is_resolved_per_task_and_named_in_the_identity():
    method = parse_method_spec("noah:subnet=released")
    with pytest.raises(UserError, match="task"):
        method.identity() and method.sizes()
    pets = method.for_task(Task("oxford_iiit_pet", 37, aliases=["oxford_pet"]))  # petlbench's name, NOAH's alias
    assert pets.identity()["resolved"]["task"] == "oxford_pet"
    assert pets.sizes() == released_subnets()["vtab1k"]["oxford_pet"]
    assert method_label(pets) == "noah:subnet=released"  # one table row for all tasks
    with pytest.raises(UserError, match="no subnet for task 'shapes'"):
        method.for_task(Task("shapes", 6))


def test_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="has 12 blocks, the backbone 2"):
        build("noah:subnet=cifar100")
    with pytest.raises(UserError, match="neither uniform"):
        build("noah:subnet=nowhere.yaml")
    with pytest.raises(UserError, match="different numbers of blocks"):
        build(f"noah:subnet={subnet_file(tmp_path, {'prompts': [1], 'lora': [1, 1], 'adapter': [1, 1]})}")
    with pytest.raises(UserError, match="LoRA rank is 49, above 48"):
        build("noah:rank=49")


def copy_into(dst, src):
    with torch.no_grad():
        dst.copy_(src)


def perturbed(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_adapter_only_subnet_is_the_adapter_method():
    noah = perturbed(build("noah:tokens=0:rank=0:bottleneck=6"))
    adapter = build("adapter:bottleneck=6").eval()
    ours = [m.adapter for m in noah.modules() if isinstance(m, AdaptedDropPath)]
    theirs = [m.adapter for m in adapter.modules() if isinstance(m, AdaptedDropPath)]
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        b.load_state_dict(a.state_dict())
    adapter.head.load_state_dict(noah.head.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(noah(x), adapter(x), rtol=0, atol=1e-6)


def test_prompt_only_subnet_is_vpt_deep():
    """Prompts appended at the end (NOAH) or after the class token (VPT): the class token's output is the same."""
    noah = perturbed(build("noah:tokens=4:rank=0:bottleneck=0"))
    vpt = build("vpt_deep:tokens=4").eval()
    ours = [m.prompts for m in noah.modules() if isinstance(m, TailPrompts)]
    theirs = [m.prompts for m in vpt.modules() if isinstance(m, InsertPrompts)]
    for a, b in zip(ours, theirs, strict=True):
        copy_into(b, a)
    vpt.head.load_state_dict(noah.head.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(noah(x), vpt(x), rtol=0, atol=1e-5)


def test_lora_only_subnet_is_lora_on_q_k_v_with_one_shared_a():
    noah = perturbed(build("noah:tokens=0:rank=3:bottleneck=0:dropout=0"))
    lora = build("lora:rank=3:alpha=3:targets=q+k+v").eval()
    ours = [m for m in noah.modules() if isinstance(m, FusedLoRA)]
    theirs = [m for m in lora.modules() if isinstance(m, peft.tuners.lora.Linear)]
    assert len(ours) == 2 and len(theirs) == 6
    for i, fused in enumerate(ours):
        width = fused.qkv.out_features // 3
        for j, layer in enumerate(theirs[3 * i:3 * i + 3]):  # q, k, v
            copy_into(layer.lora_A["default"].weight, fused.lora_a)
            copy_into(layer.lora_B["default"].weight, fused.lora_b[j * width:(j + 1) * width])
    lora.head.load_state_dict(noah.head.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(noah(x), lora(x), rtol=0, atol=1e-5)


def test_carried_prompts_follow_noahs_strip_rule(tmp_path):
    """Block i with p_i > 0 drops the previous block's p_{i-1} prompts (none after a size-0 block, whose carried
    prompts stay); the prompts still carried are stripped after the last block."""
    sizes = {"prompts": [3, 0, 2, 4], "lora": [0] * 4, "adapter": [0] * 4}
    spec = BackboneSpec("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4,
                                                 "num_heads": 3}, pretrained=False)
    model = build_model(spec, parse_method_spec(f"noah:subnet={subnet_file(tmp_path, sizes)}"), 5, seed=0)[0]
    prompts = [m for m in model.modules() if isinstance(m, TailPrompts)]
    assert [(m.prompts.shape[1], m.strip) for m in prompts] == [(3, 0), (2, 0), (4, 2)]
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert seen == [17, 20, 20, 22]  # 1 + 16 patches; +3; carried; +2 (3 stay); -2 +4 -> 3 + 4 carried
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[1] == 17


def test_paper_source_is_regenerated_and_plans_every_vtab_task_with_its_released_subnet(tmp_path):
    """`--protocol paper --source noah`: 19 runs, each the task's released subnet under NOAH's retrain recipe."""
    from petlbench.settings import load_settings, packaged_sources
    from petlbench.sweep.runner import make_sweep
    from petlbench.tools.paper_settings import SOURCES, dump
    assert packaged_sources()["noah"].read_text() == dump(SOURCES["noah"](ROOT / "tests/data/paper_settings"))
    sweep = make_sweep("vtab1k", "noah", [0], data_root=str(tmp_path), out=str(tmp_path / "out"), protocol="paper",
                       source="noah", random_init=True, log=lambda line: None)
    settings, table = load_settings("noah"), released_subnets()["vtab1k"]
    plans = [sweep.plan(task, method, 0) for task in sweep.tasks for method in sweep.methods]
    assert len(plans) == 19
    for p in plans:
        row = settings.row("vtab1k", p.task.name, "noah")
        assert row.best_top1 is not None and p.train.lr == 1e-3 and p.train.weight_decay == 1e-4
        assert p.train.decay_rule == "timm" and p.backbone.args["drop_path_rate"] == 0.1
        assert p.method.identity()["resolved"] == {**table[row.options["subnet"]],
                                                   "sha256": p.method.identity()["resolved"]["sha256"]}
