"""The base-to-new protocol (`--base-to-new`, CoCoOp): the class split, the data each half sees, zero-shot numbers
equal to open_clip's own on those subsets, the harmonic mean, refusals, and real CLI runs and tables on a tiny CLIP."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from petlbench.clip import CONFIG_DIR
from petlbench.data import classsplit
from petlbench.data.decode import SplitCache
from petlbench.data.demo import write_task
from petlbench.data.layouts import find_task_dir, list_images
from petlbench.registry import parse_method_spec
from petlbench.sweep.runner import make_sweep
from petlbench.textheads import ZeroShotHead
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

COUNTS = ["one object", "two objects", "three objects", "four objects", "five objects", "six objects"]
SPOTS = [f"cell {i}" for i in range(9)]  # position: 9 classes -> 5 base, 4 new
TEMPLATES = ["a photo of {}.", "a picture of {}."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random CLIP saved as open_clip's state dict, two tiny NOAH-layout tasks and a suite naming classes."""
    tmp = tmp_path_factory.mktemp("b2n")
    open_clip.add_model_config(CONFIG_DIR)
    torch.manual_seed(0)
    reference = open_clip.create_model("tiny", pretrained=None).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p))
    checkpoint = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(checkpoint))
    root = tmp / "data"
    for i, name in enumerate(("count", "position")):
        write_task(root, name, seed=i, sizes={"train800": 48, "val200": 16, "test": 40})
    suite = write_tiny_suite(tmp / "suite.yaml", {"count": 6, "position": 9}, epochs=1)
    text = suite.read_text().replace("{name: count, classes: 6, group: structured}",
                                     f"{{name: count, classes: 6, group: structured, classnames: {COUNTS}}}")
    text = text.replace("{name: position, classes: 9, group: structured}",
                        f"{{name: position, classes: 9, group: structured, classnames: {SPOTS}}}")
    suite.write_text(text + f"templates: {TEMPLATES}\n")
    return reference, checkpoint, root, suite, tmp


def common(setup, out: Path) -> list[str]:
    _, checkpoint, root, suite, _ = setup
    return ["run", "--suite", str(suite), "--data-root", str(root), "--out", str(out), "--backbone", "clip:tiny",
            "--checkpoint", str(checkpoint)]


def records(out: Path) -> list[dict]:
    found = (json.loads(p.read_text()) for p in out.rglob("*.json") if "replaced" not in p.parts)
    return [r for r in found if "run_id" in r]  # not the tune selection file


@pytest.fixture(scope="module")
def runs(setup):
    """One real CLI run: zeroshot and a linear probe on the zero-shot head, base-to-new, both tasks; and the same
    zeroshot as an ordinary run beside them."""
    out = setup[4] / "results"
    base = petlbench_cli(*common(setup, out), "--methods", "zeroshot,linear", "--backbone-args", "head=zeroshot",
                         "--base-to-new", "--no-weights")
    assert base.returncode == 0, base.stderr
    plain = petlbench_cli(*common(setup, out), "--methods", "zeroshot", "--backbone-args", "head=zeroshot",
                          "--tasks", "count", "--no-weights", "--no-samples")
    assert plain.returncode == 0, plain.stderr
    return out, records(out)


def labels_of(root: Path, task: str, split: str, suite) -> list[int]:
    task_obj = next(t for t in suite.tasks if t.name == task)
    return [label for _, label in list_images("noah", find_task_dir(root, task_obj), task_obj, split,
                                              suite.split_names())]


def test_split_is_ceil_half_with_each_half_relabelled():
    assert [(len(b), len(n)) for b, n in map(classsplit.halves, (2, 6, 7, 9, 100, 101))] == \
        [(1, 1), (3, 3), (4, 3), (5, 4), (50, 50), (51, 50)]  # CoCoOp: m = ceil(n / 2) base, the rest new
    base, new = classsplit.halves(7)
    assert list(base) == [0, 1, 2, 3] and list(new) == [4, 5, 6]
    from petlbench.data.decode import TensorData
    labels = torch.tensor([6, 0, 3, 4, 1, 5, 2, 4])
    data = TensorData(torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 1, 1).clone(), labels,
                      torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1), digest="d")
    kept, fresh = classsplit.select(data, base, "base"), classsplit.select(data, new, "new")
    assert kept.labels.tolist() == [0, 3, 1, 2] and kept.images[:, 0, 0, 0].tolist() == [1, 2, 4, 6]
    assert fresh.labels.tolist() == [2, 0, 1, 0] and fresh.images[:, 0, 0, 0].tolist() == [0, 3, 5, 7]
    assert len({data.digest, kept.digest, fresh.digest}) == 3, "each half is its own data identity"


def test_harmonic_mean_is_cocoops():
    assert classsplit.harmonic_mean(80.47, 71.69) == pytest.approx(75.83, abs=5e-3)  # CoCoOp Table 1, average
    assert classsplit.harmonic_mean(0.5, 0.5) == 0.5 and classsplit.harmonic_mean(0.0, 0.0) == 0.0
    assert classsplit.harmonic_mean(1.0, 0.0) == 0.0


def test_training_sees_base_classes_only_and_new_evaluation_new_test_images_only(setup):
    _, checkpoint, root, suite_path, _ = setup
    sweep = make_sweep(str(suite_path), "zeroshot", [0], data_root=str(root), backbone="clip:tiny",
                       checkpoint=str(checkpoint), base_to_new=True, log=lambda line: None)
    task = next(t for t in sweep.tasks if t.name == "position")
    plan = sweep.plan(task, sweep.methods[0], 0)
    assert plan.protocol["base_to_new"] is True
    cache, prep = SplitCache(), plan.preprocessing()
    train = cache.get(plan, plan.protocol["train_splits"], prep, train=True)
    test = cache.get(plan, plan.protocol["eval_splits"], prep, train=False)
    base_train, base_test, split = classsplit.apply(plan, train, test)
    assert split.base == 5 and split.base_names == SPOTS[:5] and split.new_names == SPOTS[5:]
    assert set(base_train.labels.tolist()) <= set(range(5)) and len(base_train) == int((train.labels < 5).sum())
    assert set(base_test.labels.tolist()) <= set(range(5)) and len(base_test) == int((test.labels < 5).sum())
    new = test.labels >= 5
    assert split.new_test.labels.tolist() == (test.labels[new] - 5).tolist()
    assert torch.equal(split.new_test.images, test.images[new]), "the new half is exactly the new classes' test images"
    built = classsplit.trained_plan(plan)
    assert built.task.classes == 5 and built.task.classnames == SPOTS[:5] and plan.task.classes == 9
    search = sweep.plan(task, sweep.methods[0], 0, "search")
    val = cache.get(search, search.protocol["eval_splits"], prep, train=False)
    _, base_val, nothing = classsplit.apply(search, train, val)
    assert nothing.new_test is None and set(base_val.labels.tolist()) <= set(range(5)), "choices on base classes"


def test_records_hold_base_new_hm_and_the_split(setup, runs):
    _, _, root, suite_path, _ = setup
    from petlbench.suite import load_suite
    suite = load_suite(str(suite_path))
    _, found = runs
    b2n = [r for r in found if r["protocol"].get("base_to_new")]
    assert len(b2n) == 4 and all(r["status"] == "success" for r in b2n)
    for r in b2n:
        m = r["metrics"]
        assert m["test_top1"] == m["base_top1"], "test_top1 is the base classes' top-1"
        assert m["hm"] == pytest.approx(2 * m["base_top1"] * m["new_top1"] / (m["base_top1"] + m["new_top1"]))
        classes = r["num_classes"]
        base = -(-classes // 2)
        train = labels_of(root, r["task"], "train800val200", suite)
        test = labels_of(root, r["task"], "test", suite)
        split = r["data"]["base_to_new"]
        assert (split["base_classes"], split["new_classes"]) == (base, classes - base)
        assert split["train_images"] == r["data"]["train_images"] == sum(label < base for label in train)
        assert split["base_eval_images"] == r["data"]["eval_images"] == sum(label < base for label in test)
        assert split["new_test_images"] == sum(label >= base for label in test)
        assert "samples" not in r
    linear = next(r for r in b2n if r["method"]["name"] == "linear" and r["task"] == "count")
    assert linear["params"]["head"] == 3 * 32, "the trained head classifies the 3 base classes (embed 32)"
    assert linear["data"]["base_to_new"]["new_head"] == "ZeroShotHead.for_classnames"
    plain = next(r for r in found if not r["protocol"].get("base_to_new"))
    assert plain["config_id"] not in {r["config_id"] for r in b2n}, "base-to-new is part of the run's identity"
    assert "base_to_new" not in plain["protocol"] and "new_top1" not in plain["metrics"]


def test_zeroshot_base_and_new_equal_open_clips_zero_shot_on_those_subsets(setup, runs):
    reference, checkpoint, root, suite_path, _ = setup
    _, found = runs
    sweep = make_sweep(str(suite_path), "zeroshot", [0], data_root=str(root), backbone="clip:tiny",
                       checkpoint=str(checkpoint), log=lambda line: None)
    tokenizer = open_clip.get_tokenizer("tiny")
    for task in sweep.tasks:
        plan = sweep.plan(task, sweep.methods[0], 0)
        test = SplitCache().get(plan, plan.protocol["eval_splits"], plan.preprocessing(), train=False)
        images, labels = test.batch(torch.arange(len(test)))
        m = -(-task.classes // 2)
        with torch.no_grad():
            features = reference.encode_image(images, normalize=True)
            accuracy = {}
            for half, names, keep, shift in (("base", task.classnames[:m], labels < m, 0),
                                             ("new", task.classnames[m:], labels >= m, m)):
                weights = open_clip.build_zero_shot_classifier(reference, tokenizer, names, TEMPLATES, device="cpu")
                predicted = (features[keep] @ weights).argmax(1)
                accuracy[half] = (predicted == labels[keep] - shift).sum().item() / int(keep.sum())
        record = next(r for r in found if r["task"] == task.name and r["method"]["name"] == "zeroshot"
                      and r["protocol"].get("base_to_new"))
        assert record["metrics"]["base_top1"] == accuracy["base"]
        assert record["metrics"]["new_top1"] == accuracy["new"]
        assert 0 < accuracy["new"] < 1


def test_zero_shot_head_for_classnames_keeps_projection_and_embeds_the_names(setup):
    _, checkpoint, _, _, _ = setup
    from petlbench.backbone import BackboneSpec
    from petlbench.params import build_model
    spec = BackboneSpec("clip:tiny", {"head": "zeroshot"}, checkpoint=str(checkpoint))
    for method in ("zeroshot", "linear"):
        model = build_model(spec, parse_method_spec(method), 3, 0, COUNTS[:3], TEMPLATES).model
        head = model.get_classifier()
        fresh = head.for_classnames(COUNTS[3:])
        assert type(fresh) is ZeroShotHead and fresh.num_classes == 3 and fresh.text is model.clip
        assert torch.equal(fresh.proj.weight, head.proj.weight) and float(fresh.logit_scale) == float(head.logit_scale)
        assert torch.equal(fresh.classes.weight, model.clip.class_embeddings(COUNTS[3:], TEMPLATES))
        assert fresh.frozen_parts()[0] is fresh.proj


def test_table_shows_base_new_hm_apart_from_ordinary_runs(runs):
    out, _ = runs
    proc = petlbench_cli("table", str(out))
    assert proc.returncode == 0, proc.stderr
    ordinary, _, apart = proc.stdout.partition("base-to-new, test top-1")
    assert "[base-to-new]" not in ordinary and "| zeroshot " in ordinary, "ordinary runs: their own table"
    header = next(line for line in apart.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["method", "task", "base", "new", "HM", "seeds"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in apart.splitlines()
            if line.startswith("| zeroshot") or line.startswith("| linear")]
    assert {(r[0], r[1]) for r in rows} >= {("zeroshot", "count"), ("linear", "position"),
                                           ("zeroshot", "average (2 tasks)")}
    for r in rows:
        base, new, hm = map(float, r[2:5])
        assert hm == pytest.approx(classsplit.harmonic_mean(base, new), abs=0.1)  # shown to 0.1
    record = next(r for r in records(out) if r["method"]["name"] == "zeroshot" and r["task"] == "count"
                  and r["protocol"].get("base_to_new"))
    cell = next(r for r in rows if r[:2] == ["zeroshot", "count"])
    assert cell[2:4] == [f"{100 * record['metrics']['base_top1']:.1f}", f"{100 * record['metrics']['new_top1']:.1f}"]
    csv = petlbench_cli("table", str(out), "--format", "csv")
    assert csv.returncode == 0 and "method,task,base,new,HM,seeds,suite" in csv.stdout


def test_runs_are_skipped_when_done_and_heads_without_for_classnames_are_refused(setup, runs):
    out, _ = runs
    again = petlbench_cli(*common(setup, out), "--methods", "zeroshot", "--backbone-args", "head=zeroshot",
                          "--base-to-new", "--no-weights", "--tasks", "count")
    assert again.returncode == 0 and "done before, skipped" in again.stdout
    flags = common(setup, out)[1:]
    del flags[flags.index("--out"):flags.index("--out") + 2]
    status = [petlbench_cli("status", str(out), *flags, "--methods", "zeroshot", "--backbone-args", "head=zeroshot",
                            "--tasks", "position", *extra) for extra in (["--base-to-new"], [])]
    assert all(p.returncode == 0 for p in status), [p.stderr for p in status]
    assert "1 done" in status[0].stdout and "0 done" in status[1].stdout, "status tells the two protocols apart"
    before = len(records(out))
    assert_one_line_error(petlbench_cli(*common(setup, out), "--methods", "linear", "--base-to-new"),
                          "--base-to-new", "linear", "Linear", "for_classnames")
    assert_one_line_error(petlbench_cli(*common(setup, out), "--methods", "zeroshot", "--backbone-args",
                                        "head=zeroshot", "--base-to-new", "--protocol", "paper", "--source", "ssf"),
                          "--base-to-new", "--protocol paper")
    assert len(records(out)) == before, "refused at planning: no record written"


def test_shots_are_drawn_from_every_class_then_the_base_kept(setup, tmp_path):
    out = tmp_path / "results"
    proc = petlbench_cli(*common(setup, out), "--methods", "zeroshot", "--backbone-args", "head=zeroshot",
                         "--base-to-new", "--shots", "2", "--tasks", "position", "--no-weights")
    assert proc.returncode == 0, proc.stderr
    (record,) = records(out)
    assert record["protocol"]["shots"] == 2 and record["protocol"]["base_to_new"] is True
    assert record["data"]["train_images"] == 2 * 5, "K images of each of the 5 base classes"
    drawn = record["data"]["shots"]
    assert drawn["images"] == 2 * 9, "the draw is the all-class K-shot draw of the seed (CoCoOp's order)"


def test_tune_selects_on_base_validation_and_reports_new(setup, tmp_path):
    _, _, root, suite_path, _ = setup
    from petlbench.suite import load_suite
    suite = load_suite(str(suite_path))
    out = tmp_path / "results"
    proc = petlbench_cli(*common(setup, out), "--methods", "linear", "--backbone-args", "head=zeroshot",
                         "--base-to-new", "--protocol", "tune", "--grid", "{lr: [0.1, 0.01]}", "--tasks", "count",
                         "--no-weights", "--no-samples")
    assert proc.returncode == 0, proc.stderr
    found = records(out)
    search = [r for r in found if r["protocol"].get("stage") == "search"]
    (final,) = [r for r in found if r["protocol"].get("stage") == "final"]
    val = labels_of(root, "count", "val200", suite)
    assert len(search) == 2 and all(r["data"]["eval_images"] == sum(label < 3 for label in val) for r in search)
    assert all(r["protocol"]["base_to_new"] and "new_top1" not in r["metrics"] for r in search)
    assert final["protocol"]["base_to_new"] and 0 <= final["metrics"]["new_top1"] <= 1


def test_deploy_verbs_refuse_base_to_new_records(runs):
    out, _ = runs
    path = next(p for p in out.rglob("zeroshot__seed0__*.json")
                if json.loads(p.read_text())["protocol"].get("base_to_new"))
    assert_one_line_error(petlbench_cli("eval", str(path)), "base-to-new", str(path))


@pytest.mark.parametrize("method", ["coop:n_ctx=4", "cocoop", "clip_adapter", "zeroshot"])
def test_text_heads_score_new_names_as_a_head_built_for_them_with_the_same_learned_parts(setup, method):
    """for_classnames = the method's head built on the new names, its learned parts (context, meta-net, adapter)
    taken from the trained head: CoCoOp's test_new, where the prompt learner is rebuilt for the new class names."""
    _, checkpoint, _, _, _ = setup
    from petlbench.backbone import BackboneSpec
    from petlbench.params import build_model
    spec = BackboneSpec("clip:tiny", {}, checkpoint=str(checkpoint))
    trained = build_model(spec, parse_method_spec(method), 3, 0, COUNTS[:3], TEMPLATES).model.get_classifier()
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))  # as if trained: off their initial values
    fresh = build_model(spec, parse_method_spec(method), 3, 1, COUNTS[3:], TEMPLATES).model.get_classifier()
    own = {name: p for name, p in trained.named_parameters() if p.requires_grad}
    if method != "zeroshot":
        fresh.load_state_dict({**fresh.state_dict(), **{k: v.detach() for k, v in own.items()}})
    renamed = trained.for_classnames(COUNTS[3:])
    x = torch.randn(5, trained.in_features)
    with torch.no_grad():
        torch.testing.assert_close(renamed(x), fresh(x), rtol=0, atol=1e-5)
        assert not torch.allclose(renamed(x), trained(x)), "other names, other logits"


def test_heads_that_cannot_name_new_classes_are_refused_at_planning(setup, tmp_path):
    out = tmp_path / "results"
    assert_one_line_error(petlbench_cli(*common(setup, out), "--methods", "coop:csc=true:n_ctx=4", "--base-to-new"),
                          "--base-to-new", "coop", "csc")
    assert_one_line_error(petlbench_cli(*common(setup, out), "--methods", "tip_adapter", "--base-to-new"),
                          "--base-to-new", "TipAdapterHead", "for_classnames")
    assert not out.exists() or not records(out)


def test_coop_runs_base_to_new(setup, tmp_path):
    out = tmp_path / "results"
    proc = petlbench_cli(*common(setup, out), "--methods", "coop:n_ctx=4,cocoop", "--base-to-new", "--tasks", "count",
                         "--train", "epochs=1,batch_size=8", "--no-weights")
    assert proc.returncode == 0, proc.stderr
    found = {r["method"]["name"]: r for r in records(out)}
    assert found["coop"]["data"]["base_to_new"]["new_head"] == "CoOpHead.for_classnames"
    assert found["cocoop"]["data"]["base_to_new"]["new_head"] == "CoCoOpHead.for_classnames"
    assert all(0 <= r["metrics"]["new_top1"] <= 1 and r["status"] == "success" for r in found.values())


def test_published_base_to_new_rows_match_dataset_backbone_and_shots(runs):
    import pandas as pd
    from petlbench.report import base2new
    from petlbench.report.summary import suite_info
    _, found = runs
    b2n = [r for r in found if r["protocol"].get("base_to_new")]
    info = suite_info("tiny", b2n)
    row = {"method": "cocoop", "backbone": "clip:tiny", "shots": 0, "top1": 0.0, "seeds": 3, "source": "s",
           "selection": "val_last", "source_key": "cocoop", "setting": "base-to-new", "base_top1": 80.0,
           "new_top1": 60.0}
    table = pd.DataFrame([{**row, "dataset": "count"}, {**row, "dataset": "position", "shots": 16},
                          {**row, "dataset": "count", "setting": "few-shot"}])
    shown = base2new.published_rows(b2n, info, table)
    assert shown[["method", "task"]].values.tolist() == [["published: cocoop [cocoop]", "count"]]
    assert shown["HM"].iloc[0] == pytest.approx(2 * 80 * 60 / 140)
