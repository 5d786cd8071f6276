"""The peft method: every offered tuner type builds on a timm ViT, starts where its paper starts, trains one step
and merges into the plain timm model; IA3's counts on ViT-B/16; tuner configs from YAML; bad types and configs are
one line (in process and on the command line)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from petlbench.backbone import BackboneSpec
from petlbench.errors import UserError
from petlbench.methods.peft import TYPES
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from petlbench.specs import TrainConfig
from petlbench.engine.train import make_optimizer
from petlbench.weights import same_architecture
from tests.conftest import TINY_BACKBONE_ARGS, assert_one_line_error, petlbench_cli
from tests.families import TINY, tiny

NUM_CLASSES = 5
STARTS_CHANGED = {"fourierft"}  # FourierFT's spectral coefficients start Gaussian (peft's and the paper's init)


@pytest.fixture(autouse=True)
def private_extensions_dir(tmp_path, monkeypatch):
    """peft's BOFT tries to compile a CUDA extension on every layer it builds; never into the user's cache."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch_extensions"))


def build(method, family="vit", num_classes=NUM_CLASSES, spec=None):
    return build_model(spec or tiny(family), parse_method_spec(method), num_classes, seed=0)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_each_type_builds_trains_and_merges(kind):
    model, counts, _ = build(f"peft:type={kind}")
    assert counts.trainable_excl_head > 0
    plain, _, _ = build("linear")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, NUM_CLASSES, (4,))
    if kind not in STARTS_CHANGED:
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():  # off zero inits that hold back the gradients of the rest
        for p in trainable.values():
            p.add_(0.01 * torch.randn_like(p))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.5, weight_decay=0.0)).step()
    assert all(not torch.equal(trainable[n], before[n]) for n in trainable)
    assert all(torch.equal(model.get_parameter(n), v) for n, v in frozen.items()), "the backbone stays frozen"

    expected = model.eval()(x).detach()
    merged = parse_method_spec(f"peft:type={kind}").merge(model)
    name, args = TINY["vit"]
    reference = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **args)
    assert same_architecture(merged, reference) is None
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_ia3_counts_on_vit_b16():
    vit_b = BackboneSpec("vit_base_patch16_224", pretrained=False)
    _, counts, _ = build("peft:type=ia3", num_classes=100, spec=vit_b)
    assert counts.trainable_excl_head == 12 * 2 * 768 == 18_432  # a scale on q's and v's outputs
    _, counts, _ = build("peft:type=ia3:targets=k+v+fc2", num_classes=100, spec=vit_b)
    assert counts.trainable_excl_head == 12 * (768 + 768 + 3072) == 55_296  # IA3's own l_k, l_v, l_ff


def test_ia3_scales_the_input_of_fc2():
    model, _, _ = build("peft:type=ia3:targets=v+fc2")
    fc2, v = model.blocks[0].mlp.fc2, model.blocks[0].attn.qkv.v
    assert fc2.is_feedforward and fc2.ia3_l["default"].numel() == 4 * 48  # the MLP's inner width
    assert not v.is_feedforward and v.ia3_l["default"].numel() == 48


def test_dora_is_lora_with_magnitudes():
    lora, dora = build("peft:type=lora")[1], build("peft:type=dora")[1]
    assert dora.trainable_excl_head - lora.trainable_excl_head == 2 * 2 * 48  # one magnitude per output, q and v


def test_config_from_yaml(tmp_path):
    path = tmp_path / "lora4.yaml"
    path.write_text("peft_type: LORA\nr: 4\nlora_alpha: 16\nlora_dropout: 0.1\n")
    method = parse_method_spec(f"peft:config={path}")
    model, counts, _ = build(f"peft:config={path}")
    assert counts.trainable_excl_head == 2 * 2 * 4 * (48 + 48)
    assert model.blocks[0].attn.qkv.q.scaling["default"] == 4.0 and method.kwargs["r"] == 4
    ia3 = tmp_path / "ia3.yaml"
    ia3.write_text("peft_type: ia3\n")
    assert build(f"peft:config={ia3}:targets=k+v+fc2")[1].trainable_excl_head == 2 * (48 + 48 + 192)


@pytest.mark.parametrize("text,needle", [
    ("peft_type: prefix_tuning\nnum_virtual_tokens: 10\n", "vpt_deep"),
    ("peft_type: vera\n", "get_peft_model"),
    ("peft_type: adalora\n", "update_and_allocate"),
    ("peft_type: lora\nrank: 8\n", "no option 'rank'"),
    ("peft_type: lora\ntarget_modules: [qkv]\n", "selects modules by name"),
    ("r: 8\n", "peft_type"),
    ("- lora\n", "peft_type"),
    ("peft_type: nonsense\n", "unknown peft type"),
])
def test_bad_configs_are_one_line(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle) as err:
        parse_method_spec(f"peft:config={path}")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_types_and_files_are_one_line(tmp_path):
    for bad, needle in (("peft:type=vera", "lora|dora"), ("peft:type=prefix", "lora|dora"),
                        (f"peft:config={tmp_path / 'missing.yaml'}", "cannot read"), ("peft:targets=q+qkv", "q|k|v")):
        with pytest.raises(UserError, match=needle) as err:
            parse_method_spec(bad)
        assert "\n" not in str(err.value)
    path = tmp_path / "ia3.yaml"
    path.write_text("peft_type: ia3\n")
    with pytest.raises(UserError, match="contradicts"):
        parse_method_spec(f"peft:type=loha:config={path}")


def test_a_tuner_that_does_not_fit_the_model_is_one_line(tmp_path):
    path = tmp_path / "r0.yaml"
    path.write_text("peft_type: lora\nr: 0\n")  # peft checks r only when it builds the layers
    for method, needle, family in (("peft:type=fourierft", "FourierFTConfig", "swin"),  # 1000 > 24 x 24 entries
                                   (f"peft:config={path}", "LoraConfig", "vit")):
        with pytest.raises(UserError, match=needle) as err:
            build(method, family=family)
        assert "\n" not in str(err.value)


def test_cli_refuses_a_prompt_tuning_config(tmp_path):
    path = tmp_path / "prompt.yaml"
    path.write_text("peft_type: PROMPT_TUNING\nnum_virtual_tokens: 4\n")
    proc = petlbench_cli("params", "--backbone", "vit_tiny_patch16_224", "--backbone-args", TINY_BACKBONE_ARGS,
                         "--num-classes", "5", "--methods", f"peft:config={path}", timeout=120)
    assert_one_line_error(proc, "PROMPT_TUNING", "vpt_deep")


def test_editing_the_config_file_is_a_new_run(tmp_path):
    from pathlib import Path
    from petlbench.plan import plan_one, resolve_backbone
    from petlbench.registry import parse_method_spec
    from petlbench.suite import load_suite
    config = tmp_path / "ia3.yaml"
    config.write_text("peft_type: IA3\n")
    suite = load_suite("vtab1k")
    spec = resolve_backbone(suite, Path("/nonexistent"), None, None, None, True)

    def run_id():
        method = parse_method_spec(f"peft:config={config}")
        assert Path(method.config.config).is_absolute()
        return plan_one(suite, suite.tasks[0], method, spec, 0, {}, None, suite.protocol("final"),
                        Path("/nonexistent")).config_id()

    before = run_id()
    config.write_text("peft_type: IA3\ninit_ia3_weights: false\n")
    assert run_id() != before
