"""The few-shot protocol (`--shots K`): the sampler, the protocol it makes, real tiny runs, the table's rows."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from petlbench.data.shots import VAL_SHOTS, check_shots, draw, few_shot_protocol
from petlbench.errors import UserError
from petlbench.specs import LAYOUT_SPLITS
from petlbench.suite import load_suite
from tests.conftest import assert_one_line_error, petlbench_cli, write_tiny_suite

LABELS = np.repeat(np.arange(5), [10, 10, 10, 10, 3])  # class 4 has only 3 images


def test_draw_takes_k_per_class_and_says_which_classes_had_fewer():
    indices, short = draw(LABELS, 4, 5, seed=0, task="t", role="train")
    assert Counter(LABELS[indices].tolist()) == {0: 4, 1: 4, 2: 4, 3: 4, 4: 3}
    assert short == {4: 3}
    assert list(indices) == sorted(set(indices.tolist()))  # no repeats, in list order
    _, none_short = draw(LABELS, 3, 5, seed=0, task="t", role="train")
    assert none_short == {}
    _, absent = draw(LABELS, 2, 7, seed=0, task="t", role="train")  # classes 5 and 6 have no image at all
    assert absent == {5: 0, 6: 0}


def test_draw_is_deterministic_per_seed_and_differs_across_seeds_tasks_and_k():
    first = draw(LABELS, 2, 5, seed=0, task="t", role="train")[0]
    assert np.array_equal(first, draw(LABELS, 2, 5, seed=0, task="t", role="train")[0])
    others = [draw(LABELS, 2, 5, seed=1, task="t", role="train")[0],
              draw(LABELS, 2, 5, seed=0, task="u", role="train")[0],
              draw(LABELS, 2, 5, seed=0, task="t", role="val")[0]]
    assert all(not np.array_equal(first, o) for o in others)
    assert len(draw(LABELS, 3, 5, seed=0, task="t", role="train")[0]) == 15


def test_protocol_final_draws_from_trainval_tune_from_train_with_min_k_4_val():
    splits = LAYOUT_SPLITS["noah"]
    suite = load_suite("demo")
    final = few_shot_protocol(suite.protocol("final"), splits, 8)
    assert final["shots"] == 8 and final["train_splits"] == ["train800val200"] and final["eval_splits"] == ["test"]
    assert "val_shots" not in final
    search = few_shot_protocol(suite.protocol("tune", "search"), splits, 8)
    assert search["train_splits"] == ["train800"] and search["eval_splits"] == ["val200"]
    assert search["val_shots"] == VAL_SHOTS == 4
    assert few_shot_protocol(suite.protocol("tune", "search"), splits, 2)["val_shots"] == 2
    tuned = few_shot_protocol(suite.protocol("tune", "final"), splits, 8)
    assert tuned["train_splits"] == ["train800"] and tuned["eval_splits"] == ["test"] and "val_shots" not in tuned
    assert few_shot_protocol(suite.protocol("final"), splits, None) == suite.protocol("final")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_check_shots_refuses_what_is_not_a_positive_integer(bad):
    with pytest.raises(UserError, match="--shots: expected a positive integer"):
        check_shots(bad)


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob("*.json")) if "search" not in p.parts]


def run(tmp_path, data, out, *extra):
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    return petlbench_cli("run", "--suite", str(suite), "--data-root", str(data), "--methods", "linear",
                         "--out", str(out), "--quiet", "--no-weights", "--no-samples", "--cache-dir", "none", *extra)


def test_run_with_shots_records_the_draw_and_never_collides_with_other_k(tmp_path, tiny_tasks):
    out = tmp_path / "results"
    proc = run(tmp_path, tiny_tasks, out, "--shots", "2", "--seeds", "0,1")
    assert proc.returncode == 0, proc.stderr
    two = records(out)
    assert len(two) == 2 and all(r["status"] == "success" for r in two)
    lines = (tiny_tasks / "count" / "train800val200.txt").read_text().splitlines()
    labels = np.array([int(line.rsplit(" ", 1)[1]) for line in lines])
    for r in two:
        assert r["protocol"]["shots"] == 2 and r["protocol"]["train_splits"] == ["train800val200"]
        shots = r["data"]["shots"]
        assert shots["k"] == 2 and shots["splits"] == ["train800val200"]
        chosen = np.array(shots["indices"])
        assert r["data"]["train_images"] == len(chosen) == shots["images"]
        assert Counter(labels[chosen].tolist()) == {c: min(2, n) for c, n in Counter(labels.tolist()).items()}
        assert r["data"]["eval_images"] == 32  # the full test split
        import hashlib
        entries = [f"{line.rsplit(' ', 1)[0]}\t{line.rsplit(' ', 1)[1]}" for line in lines]
        assert shots["list_sha256"] == hashlib.sha256("\n".join(entries).encode()).hexdigest()
    assert two[0]["data"]["shots"]["indices"] != two[1]["data"]["shots"]["indices"]  # seeds draw differently
    assert two[0]["config_id"] != two[1]["config_id"]

    again = run(tmp_path, tiny_tasks, out, "--shots", "2", "--seeds", "0")
    assert "done before, skipped" in again.stdout  # the same draw, the same run

    proc = run(tmp_path, tiny_tasks, out, "--shots", "4", "--seeds", "0")
    assert proc.returncode == 0, proc.stderr
    full = run(tmp_path, tiny_tasks, out, "--seeds", "0")
    assert full.returncode == 0, full.stderr
    every = records(out)
    assert len(every) == 4 and len({r["run_id"] for r in every}) == 4
    by_k = {r["protocol"]["shots"]: r for r in every if r["seed"] == 0}
    assert set(by_k) == {2, 4, None}
    assert "shots" not in by_k[None]["data"] and by_k[None]["data"]["train_images"] == len(lines)
    assert by_k[4]["data"]["train_images"] == sum(min(4, n) for n in Counter(labels.tolist()).values())

    table = petlbench_cli("table", str(out), "--published", "never")
    assert table.returncode == 0, table.stderr
    rows = {line.split("|")[1].strip(" ◆"): line for line in table.stdout.splitlines() if line.startswith("| linear")}
    assert set(rows) == {"linear", "linear [2-shot]", "linear [4-shot]"}
    header = [c.strip() for c in next(l for l in table.stdout.splitlines() if l.startswith("| method")).split("|")]
    assert rows["linear [2-shot]"].split("|")[header.index("seeds")].strip() == "2"  # both seeds of K = 2, one row


def test_tune_with_shots_selects_on_min_k_4_val_images_and_trains_final_on_the_same_shots(tmp_path, tiny_tasks):
    out = tmp_path / "results"
    proc = run(tmp_path, tiny_tasks, out, "--shots", "8", "--protocol", "tune", "--grid", "{lr: [0.1, 0.01]}")
    assert proc.returncode == 0, proc.stderr
    search = [r for p in (out / "tiny" / "count" / "search").glob("*__*.json")
              if (r := json.loads(p.read_text())).get("kind") != "selection"]
    assert len(search) == 2
    val_lines = (tiny_tasks / "count" / "val200.txt").read_text().splitlines()
    val_labels = Counter(int(line.rsplit(" ", 1)[1]) for line in val_lines)
    for r in search:
        assert r["protocol"]["val_shots"] == 4 and r["data"]["shots"]["val"]["splits"] == ["val200"]
        assert r["data"]["eval_images"] == sum(min(4, n) for n in val_labels.values())
    final, = records(out)
    assert final["protocol"]["train_splits"] == ["train800"] and final["protocol"]["stage"] == "final"
    assert final["data"]["shots"]["indices"] == search[0]["data"]["shots"]["indices"]  # the shots the choice saw
    assert final["data"]["eval_images"] == 32


def test_shots_never_come_from_the_test_split(tmp_path, tiny_tasks):
    suite = write_tiny_suite(tmp_path / "leak.yaml", {"count": 6}, epochs=1, extra="splits: {trainval: test}")
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tiny_tasks), "--methods", "linear",
                         "--out", str(tmp_path / "r"), "--quiet", "--shots", "2", "--cache-dir", "none")
    r, = records(tmp_path / "r")
    assert r["status"] == "failed" and "drawn from the test split" in r["error"]
    assert proc.returncode != 0


def test_shots_flag_refuses_zero_in_one_line(tmp_path, tiny_tasks):
    assert_one_line_error(run(tmp_path, tiny_tasks, tmp_path / "r", "--shots", "0"), "--shots", "positive integer")


def fewshot_record(task, index, method, seed, top1, shots, backbone, args=None, layout="noah"):
    return {"schema": 2, "run_id": f"{task}-{method}-{seed}-{shots}", "status": "success", "suite": "clipfew",
            "task": task, "task_index": index, "task_group": "", "seed": seed,
            "method": {"name": method, "label": method}, "protocol": {"name": "final", "shots": shots},
            "backbone": {"name": backbone, "args": args or {}, "weights": "timm-pretrained"},
            "data": {"layout": layout}, "metrics": {"test_top1": top1},
            "params": {"trainable_excl_head": 0, "backbone": 38_000_000}}


def published_table(tmp_path, records_list):
    from petlbench.records import write_atomic
    from petlbench.report.tables import render
    tmp_path.mkdir(parents=True, exist_ok=True)
    suite = tmp_path / "clipfew.yaml"
    suite.write_text("name: clipfew\nlayout: noah\nbackbone: {name: resnet50_clip.openai}\ntasks:\n"
                     "  - {name: textures, classes: 47, aliases: [dtd]}\n"
                     "  - {name: flowers, classes: 102, aliases: [oxford_flowers]}\n")
    out = tmp_path / "results"
    for i, r in enumerate(records_list):
        write_atomic(out / "clipfew" / f"{i}.json", {**r, "suite_file": str(suite)})
    import io
    import pandas as pd
    frame = pd.read_csv(io.StringIO(render(out, "csv")), dtype=str)
    return frame.set_index("method"), render(out, "md")


def test_published_fewshot_rows_match_dataset_alias_backbone_and_shots(tmp_path):
    rows = [fewshot_record("textures", 0, "linear", 0, 0.55, 16, "resnet50_clip.openai"),
            fewshot_record("flowers", 1, "linear", 0, 0.85, 16, "resnet50_clip.openai")]
    frame, text = published_table(tmp_path, rows)
    assert frame.loc["linear [16-shot]", "textures"] == "55.0"
    tip = "published: tip_adapter [tip_adapter (val_last), 16-shot]"
    assert frame.loc[tip, "textures"] == "60.9" and frame.loc[tip, "flowers"] == "89.9"  # 60.93, 89.89 in the file
    assert frame.loc[tip, "mean"] == f"{(60.93 + 89.89) / 2:.1f}"
    assert frame.loc["published: tip_adapter_f [tip_adapter (test_best), 16-shot] †", "textures"] == "66.5"
    assert frame.loc["published: zeroshot [tip_adapter (fixed), 0-shot]", "flowers"] == "66.0"
    assert not any("8-shot" in m or "4-shot" in m for m in frame.index)  # other K: not shown
    assert "CoOp's splits" in text and "noah layout" in text


def test_published_fewshot_rows_follow_the_shots_and_the_backbone(tmp_path):
    clip = fewshot_record("textures", 0, "linear", 0, 0.5, 4, "clip:RN50", {"pretrained": "openai"}, layout="coop")
    frame, text = published_table(tmp_path, [clip])
    assert frame.loc["published: tip_adapter [tip_adapter (val_last), 4-shot]", "textures"] == "54.0"
    assert "CoOp's splits" not in text  # the published numbers' own layout: no warning
    assert not any("16-shot" in m for m in frame.index)
    other = fewshot_record("textures", 0, "linear", 0, 0.5, 4, "vit_base_patch16_clip_224.openai")
    frame, _ = published_table(tmp_path / "other", [other])
    assert not any(m.startswith("published:") for m in frame.index)  # no RN50 rows for a ViT-B/16
    full = {**fewshot_record("textures", 0, "linear", 0, 0.5, 4, "resnet50_clip.openai"), "protocol": {"name": "final"}}
    frame, _ = published_table(tmp_path / "full", [full])
    assert list(frame.index) == ["linear"]  # a full-data run: no few-shot published rows


# --------------------------------------------------------------------------------------------------
# CoOp's layout (split_zhou_<Name>.json) and the coop11 suite


def write_coop_task(folder: Path, classes: int = 4, per_split=(5, 3, 4), name="DescribableTextures") -> dict:
    """A tiny task in CoOp's real format: images under images/<class>/, one split_zhou json with [path, label, name]."""
    from PIL import Image
    split = {}
    for s, count in zip(("train", "val", "test"), per_split):
        split[s] = []
        for c in range(classes):
            for i in range(count):
                rel = f"class_{c}/{s}_{i}.jpg"
                (folder / "images" / f"class_{c}").mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (40, 36), (60 * c % 256, 40 * i % 256, 90)).save(folder / "images" / rel)
                split[s].append([rel, c, f"class {c}"])
    (folder / f"split_zhou_{name}.json").write_text(json.dumps(split))
    return split


def coop_suite(path: Path, classes: int = 4) -> Path:
    from tests.conftest import TINY_ARGS
    path.write_text("\n".join([
        "name: tinycoop", "layout: coop",
        "backbone:", "  name: vit_tiny_patch16_224", f"  args: {TINY_ARGS}", "  pretrained: false",
        "preprocessing: {crop_pct: 0.875, train: random_crop_flip, eval: center_crop}",
        "train: {epochs: 1, warmup_epochs: 0, batch_size: 8, eval_batch_size: 64}",
        f"tasks:\n  - {{name: dtd, classes: {classes}, images: images, aliases: [DescribableTextures]}}"]) + "\n")
    return path


def test_coop_layout_reads_split_zhou_and_runs_few_shot(tmp_path):
    split = write_coop_task(tmp_path / "data" / "dtd")
    suite = coop_suite(tmp_path / "coop.yaml")
    from petlbench.data.layouts import list_images
    from petlbench.suite import load_suite as load
    task = load(str(suite)).tasks[0]
    items = list_images("coop", tmp_path / "data" / "dtd", task, "val")
    assert [(p.relative_to(tmp_path / "data" / "dtd" / "images").as_posix(), label) for p, label in items] == \
        [(rel, label) for rel, label, _ in split["val"]]
    check = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(tmp_path / "data"))
    assert check.returncode == 0, check.stdout + check.stderr
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--data-root", str(tmp_path / "data"), "--methods", "linear",
                         "--out", str(out), "--quiet", "--shots", "2", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    r, = [x for x in records(out) if "status" in x]
    assert r["protocol"]["train_splits"] == ["train"]  # CoOp trains on its train split only
    assert r["data"]["layout"] == "coop" and r["data"]["train_images"] == 8 and r["data"]["eval_images"] == 16
    chosen = [split["train"][i][0] for i in r["data"]["shots"]["indices"]]
    assert all(rel.split("/")[1].startswith("train_") for rel in chosen)


def test_coop_layout_refuses_a_bad_entry_in_one_line(tmp_path):
    split = write_coop_task(tmp_path / "data" / "dtd")
    split["train"][3] = ["class_0/train_0.jpg", 9, "class 0"]  # label outside [0, 4)
    (tmp_path / "data" / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    proc = petlbench_cli("data", "check", "--suite", str(coop_suite(tmp_path / "coop.yaml")),
                         "--data-root", str(tmp_path / "data"))
    assert proc.returncode != 0 and "train[3]" in proc.stdout + proc.stderr


def test_aircraft_lists_are_read_as_coop_reads_them(tmp_path):
    from petlbench.data.layouts import list_images
    from petlbench.specs import Task
    folder = tmp_path / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\n727-200\nA300B4\n")
    (folder / "images_variant_train.txt").write_text("1025794 707-320\n1340192 A300B4\n0056978 727-200\n")
    items = list_images("coop", folder, Task("fgvc_aircraft", 3), "train")
    assert [(p.name, label) for p, label in items] == [("1025794.jpg", 0), ("1340192.jpg", 2), ("0056978.jpg", 1)]


def test_coop11_task_names_are_the_published_datasets():
    from petlbench.report.fewshot import load
    suite = load_suite("coop")
    assert suite.name == "coop11" and suite.layout == "coop" and suite.splits["trainval"] == ["train"]
    published = set(load()["dataset"])
    assert {t.name for t in suite.tasks} == published - {"imagenet"}
    assert {t.name: t.classes for t in suite.tasks} == {
        "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196, "oxford_flowers": 102, "food101": 101,
        "fgvc_aircraft": 100, "sun397": 397, "dtd": 47, "eurosat": 10, "ucf101": 101}


def test_status_knows_few_shot_runs_by_their_k(tmp_path, tiny_tasks):
    out = tmp_path / "results"
    assert run(tmp_path, tiny_tasks, out, "--shots", "2").returncode == 0
    suite = str(tmp_path / "tiny.yaml")
    common = ["status", str(out), "--suite", suite, "--data-root", str(tiny_tasks), "--methods", "linear",
              "--format", "json"]
    done = json.loads(petlbench_cli(*common, "--shots", "2").stdout)
    missing = json.loads(petlbench_cli(*common, "--shots", "4").stdout)
    assert (done["rows"][0]["done"], done["rows"][0]["missing"]) == (1, 0)
    assert (missing["rows"][0]["done"], missing["rows"][0]["missing"]) == (0, 1)  # K = 4 is another run
