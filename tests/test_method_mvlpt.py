"""MVLPT's two phases on a tiny random CLIP: one source run on the union of the source tasks for any number of
targets, each target starting from the source's saved prompts and naming its source run, the frozen towers
untouched by a step, a changed source re-training its targets; bad input is one line."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from petlbench.backbone import BackboneSpec
from petlbench.clip import CONFIG_DIR
from petlbench.params import build_model
from petlbench.registry import parse_method_spec
from tests.conftest import assert_one_line_error, petlbench_cli

NAMES = {"count": [f"{w} objects" for w in ("one", "two", "three", "four", "five", "six")],
         "position": [f"an object at {r} {c}" for r in ("top", "middle", "bottom") for c in ("left", "centre", "right")],
         "shapes": ["triangle", "circle", "square", "star", "cross", "diamond"]}


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny", pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("clip") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    from petlbench.data.demo import write_task
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(NAMES):
        write_task(root, name, seed=i, sizes={"train800": 24, "val200": 8, "test": 16})
    return root


def write_suite(folder, epochs=1):
    folder.mkdir(parents=True, exist_ok=True)
    tasks = [f"  - {{name: {n}, classes: {len(c)}, group: natural, classnames: {json.dumps(c)}}}"
             for n, c in NAMES.items()]
    path = folder / "suite.yaml"
    path.write_text("\n".join(["name: tiny", "layout: noah",
                               f"train: {{epochs: {epochs}, warmup_epochs: 0, batch_size: 16, eval_batch_size: 64}}",
                               "tasks:", *tasks]) + "\n")
    return path


def run(suite, data, out, checkpoint, *extra, methods="mvlpt:sources=count+position:tokens=2"):
    return petlbench_cli("run", "--suite", str(suite), "--data-root", str(data), "--out", str(out),
                         "--methods", methods, "--backbone", "clip:tiny", "--checkpoint", str(checkpoint),
                         "--no-samples", *extra)


def records(out):
    found = [json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))]
    return [r for r in found if r.get("kind") == "source"], [r for r in found if "kind" not in r]


def test_one_source_run_for_many_targets(clip_checkpoint, three_tasks, tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "results"
    proc = run(suite, three_tasks, out, clip_checkpoint)
    assert proc.returncode == 0, proc.stderr
    sources, targets = records(out)
    assert len(sources) == 1 and sources[0]["status"] == "success", "the source phase runs once for every target"
    source = sources[0]
    assert source["tasks"] == ["count", "position"] and source["text"]["classnames"] == NAMES["count"] + NAMES["position"]
    assert source["data"]["tasks"]["position"]["label_offset"] == 6
    assert set(source["metrics"]["per_task"]) == {"count", "position"}
    assert sorted(r["task"] for r in targets) == ["count", "position", "shapes"]
    for r in targets:
        assert r["status"] == "success", r.get("error")
        assert r["mvlpt"]["source"]["run_id"] == source["run_id"]
        assert r["mvlpt"]["source"]["tasks"] == ["count", "position"]
        assert (out / r["mvlpt"]["source"]["record"]).is_file(), "the record names the source run's record"
        assert r["params"]["trainable"] == 2 * 2 * 48, "2 blocks x 2 tokens x width 48; the text side is frozen"
    # the same command again: the source and every target are skipped, nothing trains
    again = run(suite, three_tasks, out, clip_checkpoint)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 4, again.stdout
    # a source task's data changed: the source run trains again, and so does the target whose own data did not
    listing = three_tasks / "position" / "train800val200.txt"
    original = listing.read_text()
    try:
        path, label = original.splitlines()[0].rsplit(" ", 1)
        listing.write_text(original.replace(f"{path} {label}", f"{path} {(int(label) + 1) % 9}", 1))
        third = run(suite, three_tasks, out, clip_checkpoint)
    finally:
        listing.write_text(original)
    assert third.returncode == 0, third.stderr
    assert "done before" not in third.stdout, third.stdout
    sources, targets = records(out)
    new_source = next(s for s in sources if s["run_id"] != source["run_id"])
    shapes = [r for r in targets if r["task"] == "shapes"]
    assert len(shapes) == 2 and {r["mvlpt"]["source"]["run_id"] for r in shapes} == {source["run_id"],
                                                                                     new_source["run_id"]}


UNIFIED = {"ctx", "visual", *(f"{side}_{way}.{t}" for side in ("text", "visual") for way in ("in", "out")
                              for t in ("weight", "bias")),
           *(f"mixer.resblocks.0.{m}.{t}" for m in ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
             for t in ("weight", "bias")), "mixer.resblocks.0.attn.in_proj_weight", "mixer.resblocks.0.attn.in_proj_bias"}


@pytest.mark.parametrize("variant", ["mvpt", "mcoop", "mupt"])
def test_target_starts_from_the_source_prompts(clip_checkpoint, tmp_path, variant):
    from petlbench.methods.mvlpt import SourcePrompts
    from petlbench.backbone import file_sha256
    spec = BackboneSpec("clip:tiny", {}, checkpoint=str(clip_checkpoint))
    source, _, _ = build_model(spec, parse_method_spec(f"mvlpt:tokens=3:variant={variant}"), 15, seed=1,
                               classnames=NAMES["count"] + NAMES["position"])
    from petlbench.engine.multitask import carried_state
    saved = carried_state(source)
    path = tmp_path / "prompts.safetensors"
    save_file(saved, str(path))
    method = type(parse_method_spec("mvlpt"))(parse_method_spec(f"mvlpt:tokens=3:variant={variant}").config,
                                              init=SourcePrompts(str(path), file_sha256(path)))
    target, counts, keys = build_model(spec, method, 6, seed=7, classnames=NAMES["shapes"])
    own = dict(target.named_parameters())
    assert set(saved) == {n for n, p in own.items() if p.requires_grad}
    for name, value in saved.items():
        assert torch.equal(own[name].detach(), value), name
    fresh, _, _ = build_model(spec, parse_method_spec(f"mvlpt:tokens=3:variant={variant}"), 6, seed=7, classnames=NAMES["shapes"])
    first = next(iter(saved))
    assert set(saved) == {"mcoop": {"head.ctx"}, "mvpt": {"blocks.0.0.prompts", "blocks.1.0.prompts"},
                          "mupt": {f"blocks.0.0.unified.{n}" for n in UNIFIED}}[variant]
    assert not torch.equal(dict(fresh.named_parameters())[first], saved[first])
    assert method.identity()["init_sha256"] == file_sha256(path), "the source's prompts are part of the config"
    # one step: only the prompts move; both frozen towers (and the text classifier) are bit-identical
    frozen = {n: p.detach().clone() for n, p in target.named_parameters() if not p.requires_grad}
    text = {n: p.detach().clone() for n, p in target.clip.tower.named_parameters()}
    opt = torch.optim.SGD([p for p in target.parameters() if p.requires_grad], lr=1.0)
    torch.nn.functional.cross_entropy(target(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in target.named_parameters() if n in frozen)
    assert all(torch.equal(p, text[n]) for n, p in target.clip.tower.named_parameters())
    assert not torch.equal(own[first].detach(), saved[first])
    # the source's file changed after planning: refused in one line
    save_file({k: v * 2 for k, v in saved.items()}, str(path))
    with pytest.raises(Exception, match="changed since the sweep was planned"):
        build_model(spec, method, 6, seed=7, classnames=NAMES["shapes"])


@pytest.mark.parametrize("variant, options", [("mcoop", "tokens=2"), ("mupt", "tokens=2:proj_dim=16")])
def test_text_variants_run_both_phases(clip_checkpoint, three_tasks, tmp_path, variant, options):
    suite, out = write_suite(tmp_path), tmp_path / "results"
    proc = run(suite, three_tasks, out, clip_checkpoint, "--tasks", "shapes",
               methods=f"mvlpt:sources=count+position:{options}:variant={variant}")
    assert proc.returncode == 0, proc.stderr
    sources, targets = records(out)
    assert [s["status"] for s in sources] == ["success"] and [t["task"] for t in targets] == ["shapes"]
    assert targets[0]["status"] == "success", targets[0].get("error")
    trainable, tensors = {"mcoop": (2 * 48, 1), "mupt": (unified_count(48, 48, 2, 2, d=16), len(UNIFIED))}[variant]
    assert targets[0]["params"]["trainable"] == trainable, "2 context vectors; MUPT's prompts and shared layer"
    assert sources[0]["prompts"]["tensors"] == tensors, "MUPT hands the shared layer on with the prompts"
    assert targets[0]["mvlpt"]["source"]["run_id"] == sources[0]["run_id"]
    assert targets[0]["method"]["options"]["variant"] == variant


def test_bad_sources_are_one_line(clip_checkpoint, three_tasks, tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "r"
    assert_one_line_error(run(suite, three_tasks, out, clip_checkpoint, methods="mvlpt:sources=count+nope"),
                          "nope", "not a task")
    assert_one_line_error(run(suite, three_tasks, out, clip_checkpoint, methods="mvlpt:sources=count"),
                          "at least two")
    assert_one_line_error(run(suite, three_tasks, out, clip_checkpoint, "--protocol", "tune",
                              methods="mvlpt:sources=count+position"), "--protocol final")
    assert_one_line_error(run(suite, three_tasks, out, clip_checkpoint, methods="mvlpt:variant=mupt:mixing=some"),
                          "mixing", "released")
    assert not list(out.rglob("*.json")), "refused before any run"


def unified_count(text: int, image: int, layers: int, m: int, d: int = 128) -> int:
    """MUPT's trainable tensors: M context vectors, M prompts per layer, the maps into and out of the shared layer's
    width d (none where a width is d), one transformer layer of width d (attention 4d^2 + 4d, MLP 8d^2 + 5d, two
    LayerNorms 4d)."""
    maps = sum(2 * w * d + w + d for w in (text, image) if w != d)
    return m * text + layers * m * image + maps + 12 * d * d + 13 * d


def test_mupt_parameter_count():
    from petlbench.params import count_params
    vit_b = count_params(BackboneSpec("clip:ViT-B-16", {}, pretrained=False), parse_method_spec("mvlpt:variant=mupt"), 10)
    assert vit_b.trainable == unified_count(512, 768, 12, 4) == 566_400, "ViT-B/16 at MUPT's released M=4, width 128"
    assert vit_b.head == 0, "the context and prompts are the method's; the classifier is the frozen text tower"
    tiny = count_params(BackboneSpec("clip:tiny", {}, pretrained=False),
                        parse_method_spec("mvlpt:variant=mupt:tokens=3:proj_dim=48"), 6)
    assert tiny.trainable == unified_count(48, 48, 2, 3, d=48) == 3 * 48 + 2 * 3 * 48 + 12 * 48 ** 2 + 13 * 48
    identity = parse_method_spec("mvlpt").identity()
    assert identity == {"sources": [], "variant": "mvpt", "tokens": 16, "dropout": 0.0}, \
        "the visual and text variants keep the configuration they had before MUPT"


def test_mupt_trains_only_the_unified_prompts(clip_checkpoint):
    spec = BackboneSpec("clip:tiny", {}, checkpoint=str(clip_checkpoint))
    model, _, _ = build_model(spec, parse_method_spec("mvlpt:variant=mupt"), 6, seed=0, classnames=NAMES["shapes"])
    unified = model.get_classifier().unified
    assert all(block[0].unified is unified for block in model.blocks), "every layer's prompts come from one module"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    text = {n: p.detach().clone() for n, p in model.clip.tower.named_parameters()}
    before = {n: p.detach().clone() for n, p in unified.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen), "image tower moved"
    assert all(torch.equal(p, text[n]) for n, p in model.clip.tower.named_parameters()), "text tower moved"
    moved = {n for n, p in unified.named_parameters() if not torch.equal(p, before[n])}
    assert {"ctx", "visual", "text_in.weight", "visual_in.weight", "mixer.resblocks.0.mlp.c_fc.weight"} <= moved, \
        "both the text and the visual side train through the shared layer"


def status(suite, data, out, checkpoint, methods="mvlpt:sources=count+position:tokens=2"):
    proc = petlbench_cli("status", str(out), "--suite", str(suite), "--data-root", str(data), "--methods", methods,
                         "--backbone", "clip:tiny", "--checkpoint", str(checkpoint), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    return {(r["stage"], r["task"]): r for r in found["rows"]}, found["notes"]


def state(row):
    return next(s for s in ("done", "failed", "running", "missing") if row[s])


def test_status_shows_the_source_run_and_its_targets(clip_checkpoint, three_tasks, tmp_path):
    suite, out = write_suite(tmp_path), tmp_path / "results"
    rows, notes = status(suite, three_tasks, out, clip_checkpoint)
    assert set(rows) == {("source", "count+position"), ("target", "count"), ("target", "position"),
                         ("target", "shapes")}, "one source row, a target row per task, no plain final rows"
    assert state(rows[("source", "count+position")]) == "missing"
    assert all(rows[("target", t)]["source"] == "pending (source run missing)" for t in NAMES)
    assert "pending: count, position, shapes" in notes[0], notes
    assert run(suite, three_tasks, out, clip_checkpoint, "--tasks", "shapes,count").returncode == 0
    sources, targets = records(out)
    rows, notes = status(suite, three_tasks, out, clip_checkpoint)
    assert state(rows[("source", "count+position")]) == "done"
    assert rows[("source", "count+position")]["source"] == sources[0]["run_id"]
    assert {t: state(rows[("target", t)]) for t in NAMES} == {"count": "done", "position": "missing", "shapes": "done"}
    assert all(rows[("target", t)]["source"] == sources[0]["run_id"] for t in NAMES), "each target names its source"
    assert sources[0]["run_id"] in notes[0] and "done: count, shapes" in notes[0] and "missing: position" in notes[0]
    # a target that failed shows as failed with its error; the others stay done
    shapes = next(p for p in out.rglob("*.json") if json.loads(p.read_text()).get("task") == "shapes")
    failed = {**json.loads(shapes.read_text()), "status": "failed", "error": "Traceback\nRuntimeError: out of memory"}
    shapes.write_text(json.dumps(failed))
    rows, notes = status(suite, three_tasks, out, clip_checkpoint)
    assert state(rows[("target", "shapes")]) == "failed" and state(rows[("target", "count")]) == "done"
    assert "failed: shapes (RuntimeError: out of memory)" in notes[0], notes
    # the table form through the CLI names the source run too
    text = petlbench_cli("status", str(out), "--suite", str(suite), "--data-root", str(three_tasks), "--methods",
                         "mvlpt:sources=count+position:tokens=2", "--backbone", "clip:tiny", "--checkpoint",
                         str(clip_checkpoint))
    assert text.returncode == 0 and sources[0]["run_id"] in text.stdout and "| target" in text.stdout, text.stdout
