"""Wrong configurations are refused while planning, in one line, before any run: options that do not fit the backbone
(found by building each method once on the meta device), bad values in a peft config file, non-finite numbers, and
seeds no generator takes."""
from __future__ import annotations

from pathlib import Path

import pytest

from petlbench import params
from petlbench.commands import parse_seeds
from petlbench.errors import UserError
from petlbench.method import Method
from petlbench.registry import register_method, unregister_method
from petlbench.sweep.phases import search
from petlbench.sweep.runner import make_sweep
from tests.conftest import TINY_BACKBONE_ARGS, assert_one_line_error, petlbench_cli, write_tiny_suite
from tests.fixtures import write_vtab_tree

WIDE = {"embed_dim": 96, "depth": 4}  # the tiny ViT at the width of the faults' reports (96), with 4 blocks
RESNET = {"layers": [1, 1, 1, 1]}  # resnet18's 3x3 convs read 64 channels at the fewest; its input is 224


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory) -> Path:
    """The conftest's two small tasks, written once for the module (planning only reads their folders)."""
    from petlbench.data.demo import write_task
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(("count", "position")):
        write_task(root, name, seed=i, sizes={"train800": 48, "val200": 16, "test": 32})
    return root


def sweep(tmp_path: Path, data: Path, methods: str, protocol: str = "final", **kwargs):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6, "position": 9})
    kwargs.setdefault("backbone_args", dict(WIDE))
    return make_sweep(str(suite), methods, [0], data_root=str(data), out=str(tmp_path / "out"), protocol=protocol,
                      **kwargs)


def refused(tmp_path, data, methods, *needles, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        sweep(tmp_path, data, methods, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_kadaptation_factor_must_divide_the_widths_it_adapts(tmp_path, tiny_tasks):
    """factor=7 on width 96 trained peft LoKr's 6 x 16 under the label factor=7."""
    message = refused(tmp_path, tiny_tasks, "kadaptation:factor=7", "'factor' is 7", "96", "6 x 16")
    assert message.startswith("method kadaptation:")
    sweep(tmp_path, tiny_tasks, "kadaptation:factor=8")  # 8 divides 96 and 384: planned


def test_lokr_decompose_factor_in_a_peft_config_must_divide_too(tmp_path, tiny_tasks):
    config = tmp_path / "lokr.yaml"
    config.write_text("peft_type: lokr\ndecompose_factor: 7\n")
    refused(tmp_path, tiny_tasks, f"peft:config={config}", str(config), "decompose_factor", "7", "96")


SIZES = [  # method, the option and value in the message, the bound it exceeds, backbone
    ("fact:rank=1000", "'rank' is 1000", "96", None),
    ("fact:variant=tt:rank=97", "'rank' is 97", "96", None),
    ("lora:rank=97", "'rank' is 97", "96", None),
    ("kadaptation:factor=8:rank=97", "'rank' is 97", "96", None),
    ("adapter:bottleneck=97", "'bottleneck' is 97", "96", None),
    ("adapter_plus:bottleneck=500", "'bottleneck' is 500", "96", None),
    ("adaptformer:bottleneck=97", "'bottleneck' is 97", "96", None),
    ("convpass:dim=97", "'dim' is 97", "96", None),
    ("partial:blocks=10", "'blocks' is 10", "4", None),
    ("conv_adapter:compression=65", "'compression' is 65", "64", "resnet18"),
    ("vpt_pad:pixels=225", "'pixels' is 225", "224", "resnet18"),
]


@pytest.mark.parametrize("spec,option,bound,backbone", SIZES, ids=[s[0] for s in SIZES])
def test_sizes_above_what_the_backbone_has_are_refused_at_planning(tmp_path, tiny_tasks, spec, option, bound,
                                                                     backbone):
    kwargs = {"backbone": backbone, "backbone_args": dict(RESNET)} if backbone else {}
    refused(tmp_path, tiny_tasks, spec, option, f"above {bound}", **kwargs)


@pytest.mark.parametrize("spec", ["vpt_deep:tokens=1001", "vpt_shallow:tokens=100000", "vqt:tokens=5000"])
def test_prompt_tokens_are_bounded(tmp_path, tiny_tasks, spec):
    refused(tmp_path, tiny_tasks, spec, "'tokens'", "1000")


def test_sizes_at_the_bound_still_plan(tmp_path, tiny_tasks):
    sweep(tmp_path, tiny_tasks, "fact:rank=96,lora:rank=96,adapter:bottleneck=96,partial:blocks=4,vpt_deep:tokens=1000")


def test_a_grid_point_that_does_not_fit_is_refused_before_any_search_runs(tmp_path, tiny_tasks):
    s = sweep(tmp_path, tiny_tasks, "adapter_plus", protocol="tune", grid={"bottleneck": [8, 500]})
    with pytest.raises(UserError, match="'bottleneck' is 500, above 96"):
        search(s, s.tasks[0], s.methods[0])


def test_fact_rank_1000_is_one_line_from_the_cli_and_writes_nothing(tmp_path, tiny_tasks):
    """fault 8: fact:rank=1000 on a width-96 model grew to 23 GB and was killed, with no record and no message."""
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    out = tmp_path / "out"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--out", str(out),
                         "--methods", "fact:rank=1000", "--backbone-args", f"{TINY_BACKBONE_ARGS},embed_dim=96")
    assert_one_line_error(proc, "method fact", "'rank' is 1000", "above 96")
    assert not list(out.rglob("*.json"))


PEFT_BAD = {  # the file's text after peft_type, the key the message names
    "r: -1": "'r'", "r: 0": "'r'", "r: abc": "'r'", "r: 1000": "'r'", "lora_dropout: 2": "'lora_dropout'",
    "lora_alpha: .nan": "'lora_alpha'", "lora_alpha: .inf": "'lora_alpha'", "use_dora: 3": "'use_dora'",
}


@pytest.mark.parametrize("line", sorted(PEFT_BAD))
def test_bad_peft_config_values_name_the_file_and_key(tmp_path, tiny_tasks, line):
    """fault 9: these passed planning, then every run failed (57 failed records on VTAB-1k x 3 seeds)."""
    config = tmp_path / "tuner.yaml"
    config.write_text(f"peft_type: lora\n{line}\n")
    refused(tmp_path, tiny_tasks, f"peft:config={config}", str(config), f"key {PEFT_BAD[line]}")


def test_boft_block_size_that_does_not_divide_the_width_names_the_key(tmp_path, tiny_tasks):
    config = tmp_path / "boft.yaml"
    config.write_text("peft_type: boft\nboft_block_size: 7\n")
    refused(tmp_path, tiny_tasks, f"peft:config={config}", str(config), "key 'boft_block_size'", "96")


def test_non_finite_backbone_args_are_refused(tmp_path, tiny_tasks):
    refused(tmp_path, tiny_tasks, "linear", "--backbone-args", "'drop_path_rate'", "nan",
            backbone_args={**WIDE, "drop_path_rate": float("nan")})


def test_each_method_is_built_once_per_backbone_while_planning(tmp_path):
    """19 tasks x 3 seeds x 2 methods plan with two meta builds, not 114."""
    write_vtab_tree(tmp_path / "vtab")
    params._META_COUNTS.clear()
    s = make_sweep("vtab1k", "lora:rank=5,adapter:bottleneck=5", [0, 1, 2], backbone="vit_tiny_patch16_224",
                   backbone_args={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3},
                   random_init=True, data_root=str(tmp_path / "vtab"), out=str(tmp_path / "out"))
    plans = [s.plan(task, method, seed) for task in s.tasks for method in s.methods for seed in s.seeds]
    assert len(plans) == 19 * 2 * 3
    assert len(params._META_COUNTS) == 2


class NeedsRealWeights(Method):
    """A method whose apply reads a weight's value: it cannot be built on the meta device."""
    name = "needs_real_weights"

    def apply(self, model):
        if float(model.get_classifier().weight.abs().sum()) < 0:
            raise AssertionError("never")
        return model


def test_a_method_whose_apply_needs_real_tensors_still_plans(tmp_path, tiny_tasks):
    register_method(NeedsRealWeights)
    try:
        s = sweep(tmp_path, tiny_tasks, "needs_real_weights")
        assert params.meta_counts(s.plan(s.tasks[0], s.methods[0], 0).backbone, s.methods[0]) is None  # not built
    finally:
        unregister_method("needs_real_weights")


def test_seeds_no_generator_takes_are_refused_when_parsed():
    """fault 16: every run of --seeds 99999999999999999999999 failed with an overflow error."""
    with pytest.raises(UserError) as err:
        parse_seeds("0,99999999999999999999999")
    assert str(err.value) == "--seeds: expected integers from 0 to 4294967295 (2**32 - 1), got 99999999999999999999999"


@pytest.mark.parametrize("seeds,ok", [([-1], False), ([2**32], False), ([True], False), ([0, 2**32 - 1], True)])
def test_seed_bounds(tmp_path, tiny_tasks, seeds, ok):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6})
    def plan():
        return make_sweep(str(suite), "linear", seeds, data_root=str(tiny_tasks), out=str(tmp_path / "o"))
    if ok:
        assert plan().seeds == seeds
    else:
        with pytest.raises(UserError, match="--seeds"):
            plan()

