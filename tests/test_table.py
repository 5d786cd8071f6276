"""Tables from hand-written records, checked against numbers computed by hand."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from petlbench.errors import UserError
from petlbench.records import SCHEMA, write_atomic
from petlbench.report.tables import render


def record(task, index, method, seed, top1, params, status="success"):
    return {"schema": SCHEMA, "run_id": f"{task}-{method}-{seed}", "status": status, "suite": "mini",
            "task": task, "task_index": index, "task_group": "natural", "seed": seed,
            "method": {"name": method.split(":")[0], "label": method},
            "backbone": {"name": "vit_b", "weights": "random-init"},
            "metrics": {"test_top1": top1}, "params": {"trainable_excl_head": params, "backbone": 1_000_000}}


@pytest.fixture
def results(tmp_path):
    rows = [
        record("b_task", 1, "linear", 0, 0.50, 0), record("b_task", 1, "linear", 1, 0.60, 0),
        record("a_task", 0, "linear", 0, 0.80, 0), record("a_task", 0, "linear", 1, 0.90, 0),
        record("a_task", 0, "vpt_deep:tokens=5", 0, 0.70, 3000), record("b_task", 1, "vpt_deep:tokens=5", 0, 0.40, 5000),
        record("b_task", 1, "bitfit", 0, 0.99, 100, status="failed"),
    ]
    for i, r in enumerate(rows):
        if r["status"] == "failed":
            r.pop("metrics")
        write_atomic(tmp_path / "mini" / f"{i}.json", r)
    (tmp_path / "mini" / "notes.json").write_text("[1, 2]")  # not a record: ignored
    return tmp_path


def test_csv_numbers_by_hand(results):
    frame = pd.read_csv(io.StringIO(render(results, "csv")), dtype=str).set_index("method")
    assert list(frame.columns[:2]) == ["a_task", "b_task"], "columns follow the suite's task order"
    assert frame.loc["linear", "a_task"] == "85.0±7.1"  # mean 85, sample std of (80, 90) = 7.07
    assert frame.loc["linear", "b_task"] == "55.0±7.1"
    assert frame.loc["linear", "mean"] == "70.0±7.1"  # per-seed means 65 (80, 50) and 75 (90, 60)
    assert frame.loc["linear", "seeds"] == "2"
    assert frame.loc["vpt_deep:tokens=5", "a_task"] == "70.0"
    assert frame.loc["vpt_deep:tokens=5", "mean"] == "55.0"
    assert frame.loc["vpt_deep:tokens=5", "params (M)"] == "0.004"  # (3000 + 5000) / 2
    assert frame.loc["vpt_deep:tokens=5", "% backbone"] == "0.400"
    assert "bitfit" not in frame.index, "failed runs are not tabulated"


def test_markdown_and_latex_mention_failures(results):
    md = render(results, "md")
    assert "| linear" in md and "1 failed run(s) are not shown" in md
    latex = render(results, "latex")
    assert "\\toprule" in latex and "85.0$\\pm$7.1" in latex and "% 1 failed run(s)" in latex


def test_incomplete_row_is_marked(tmp_path):
    write_atomic(tmp_path / "a.json", record("a_task", 0, "linear", 0, 0.5, 0))
    write_atomic(tmp_path / "b.json", record("b_task", 1, "full", 0, 0.7, 10))
    md = render(tmp_path, "md")
    assert "50.0*" in md and "the mean over the tasks it has" in md


def test_table_errors(tmp_path):
    with pytest.raises(UserError, match="no such results folder"):
        render(tmp_path / "nope")
    with pytest.raises(UserError, match="no successful run records"):
        render(tmp_path)
    write_atomic(tmp_path / "a.json", record("a_task", 0, "linear", 0, 0.5, 0))
    with pytest.raises(UserError, match="--format"):
        render(tmp_path, "xml")


# --- VTAB-1k and FGVC: group means, both overall means, published rows and differences ---

AUGREG, ORIG = "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.orig_in21k"
VIT_B = 85_798_656  # ViT-B/16 without head


def run_record(suite, task, method, seed, top1, params=0, backbone=AUGREG, weights="timm-pretrained", label=None,
               stage=None):
    """A successful record as the runner writes it, with the suite's real task index and group."""
    from petlbench.suite import load_suite
    tasks = load_suite(suite).tasks
    index = next(i for i, t in enumerate(tasks) if t.name == task)
    return {"schema": SCHEMA, "run_id": f"{suite}-{task}-{label or method}-{seed}-{stage}", "status": "success",
            "suite": suite, "task": task, "task_index": index, "task_group": tasks[index].group, "seed": seed,
            "method": {"name": method, "label": label or method}, "backbone": {"name": backbone, "weights": weights},
            "protocol": {"name": "tune" if stage else "final", **({"stage": stage} if stage else {})},
            "metrics": {"test_top1": top1 / 100}, "params": {"trainable_excl_head": params, "backbone": VIT_B}}


def write(folder, records):
    for r in records:
        write_atomic(folder / r["suite"] / f"{r['run_id']}.json", r)
    return folder


def parse(cell):
    """'66.5±2.1*' -> (66.5, 2.1, True); '' -> None."""
    if not isinstance(cell, str) or not cell:
        return None
    marked = cell.endswith("*")
    mean, _, std = cell.rstrip("*").partition("±")
    return float(mean), float(std) if std else None, marked


def csv_rows(text):
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).set_index("method")


# vpt_deep, seeds 0 and 1: two natural tasks, all four specialized, three structured
VPT = {"cifar": (70, 72), "dtd": (60, 64), "patch_camelyon": (80, 84), "eurosat": (90, 92), "resisc45": (70, 73),
       "diabetic_retinopathy": (70, 70), "clevr_count": (50, 54), "dmlab": (40, 40), "kitti": (60, 62)}


@pytest.fixture
def vtab(tmp_path):
    records = [run_record("vtab1k", task, "vpt_deep", seed, acc, params=460_000)
               for task, accs in reversed(VPT.items()) for seed, acc in enumerate(accs)]
    records += [run_record("vtab1k", "cifar", "linear", 0, 50.0), run_record("vtab1k", "eurosat", "linear", 0, 80.0),
                run_record("vtab1k", "cifar", "vpt_deep", 0, 99.0, stage="search")]  # tuning run: never shown
    return write(tmp_path, records)


def test_vtab_group_means_and_both_overall_means_by_hand(vtab):
    frame = csv_rows(render(vtab, "csv"))
    assert list(frame.columns[:9]) == list(VPT), "the suite's task order, not the records' order"
    assert list(frame.columns[9:]) == ["mean natural", "mean specialized", "mean structured", "mean (groups)",
                                       "mean (tasks)", "params (M)", "% backbone", "seeds", "avg rank", "suite"]
    row = frame.loc["vpt_deep"]
    assert parse(row["cifar"]) == (71.0, 1.4, False)  # (70, 72): sample std sqrt(2)
    assert parse(row["dmlab"]) == (40.0, 0.0, False)
    # natural: (71 + 62) / 2 = 66.5, 2 of 7 tasks: marked; per seed 65 and 68 -> std 2.12
    assert parse(row["mean natural"]) == (66.5, 2.1, True)
    # specialized, all 4 tasks: (82 + 91 + 71.5 + 70) / 4 = 78.625; per seed 77.5 and 79.75 -> std 1.59
    assert parse(row["mean specialized"]) == (78.6, 1.6, False)
    assert parse(row["mean structured"]) == (51.0, 1.4, True)  # (52 + 40 + 61) / 3
    assert parse(row["mean (groups)"]) == (65.4, 1.7, True)  # (66.5 + 78.625 + 51) / 3 = 65.375
    assert parse(row["mean (tasks)"]) == (66.7, 1.6, True)  # 600.5 / 9 = 66.72; per seed 590/9, 611/9
    assert (row["params (M)"], row["% backbone"], row["seeds"]) == ("0.460", "0.536", "2")
    linear = frame.loc["linear"]
    assert parse(linear["eurosat"]) == (80.0, None, False) and linear["dtd"] == "" and linear["seeds"] == "1"
    assert parse(linear["mean specialized"]) == (80.0, None, True) and linear["mean structured"] == ""
    assert parse(linear["mean (groups)"]) == (65.0, None, True)  # (50 + 80) / 2 over the groups it has
    assert "99.0" not in render(vtab, "md"), "search-stage (tuning) records never appear"


def published(frame, method, source):
    """The row label of `method`'s published row from `source` (its key: vpt, noah, petl_vision, ...)."""
    found = [label for label in frame.index if label.startswith(f"published: {method} [{source} ")]
    assert len(found) == 1, (method, source, list(frame.index))
    return found[0]


def test_vtab_published_rows_and_differences(vtab):
    frame = csv_rows(render(vtab, "csv"))
    # a final run (untuned), build unknown: the closest rows are val_last; VPT's (5 seeds) before PETL_Vision's (1)
    assert published(frame, "vpt_deep", "vpt") == "published: vpt_deep [vpt (val_last, tfds-png, orig_in21k)]"
    published_row = frame.loc[published(frame, "vpt_deep", "vpt")]  # VPT Table 1, results/published/published_vtab1k.csv
    assert parse(published_row["cifar"]) == (78.8, None, False) and parse(published_row["eurosat"]) == (96.1, None, False)
    assert published_row["params (M)"] == "0.560" and published_row["seeds"] == ""
    delta = frame.loc["Δ vpt_deep vs vpt (near match)"]  # augreg_in21k vs the published orig_in21k
    assert delta["cifar"] == "-7.8"  # 71 - 78.8
    assert delta["eurosat"] == "-5.1"  # 91 - 96.1
    assert delta["dmlab"] == "-6.5"  # 40 - 46.5
    # specialized 78.625 - (81.8 + 96.1 + 83.4 + 68.4) / 4 = 78.625 - 82.425
    assert delta["mean specialized"] == "-3.8"
    assert delta["mean natural"] == "" and delta["mean (groups)"] == "", "no difference of an incomplete mean"
    assert published(frame, "linear", "vpt") and "Δ linear vs vpt (near match)" in frame.index
    assert not any(label.startswith("published: full ") for label in frame.index), "only the methods you ran"
    md = render(vtab, "md")
    assert "vpt = VPT (Jia et al., ECCV 2022) Table 1" in md and "near match: vit_base_patch16_224.augreg_in21k" in md
    assert "⚠ vpt_deep: compared with VPT" in md and "the selection rule and backbone weights differ" in md
    assert "published" not in render(vtab, "csv", published="never")


def test_published_group_means_reproduce_the_papers(tmp_path):
    """A user row per method on the published backbone; the published rows' means are the papers' columns."""
    expected = {"full": (75.9, 83.4, 47.6, 69.0), "linear": (68.9, 77.2, 26.8, 57.6), "bitfit": (73.3, 78.2, 44.1, 65.2),
                "vpt_shallow": (76.8, 79.7, 47.0, 67.8), "vpt_deep": (78.5, 82.4, 55.0, 72.0),
                "lora": (79.5, 84.6, 59.8, 74.6), "ssf": (81.6, 86.6, 59.0, 75.7)}  # design.md section 6
    write(tmp_path, [run_record("vtab1k", "cifar", m, 0, 50.0, backbone=ORIG) for m in expected])
    frame = csv_rows(render(tmp_path, "csv", published="all"))
    columns = ["mean natural", "mean specialized", "mean structured", "mean (groups)"]
    for method, means in expected.items():
        source = {"lora": "noah", "ssf": "ssf"}.get(method, "vpt")
        label = published(frame, method, source)
        assert label.endswith(" †") == (source != "vpt"), "NOAH and SSF keep the best test epoch; VPT does not"
        got = [parse(frame.loc[label, c]) for c in columns]
        assert all(not marked for _, _, marked in got), method
        assert [m for m, _, _ in got] == pytest.approx(means, abs=0.051), method
    # linear, all 19 tasks: 1005.9 / 19 = 52.94 -- not the mean of the group means
    assert parse(frame.loc[published(frame, "linear", "vpt"), "mean (tasks)"])[0] == 52.9
    assert "Δ linear vs vpt" in frame.index, "exact match: no (near match) label"


def test_full_vtab_row_differences_of_every_mean(tmp_path):
    """Published linear + 1 point on every task: every difference, the means' too, is +1.0."""
    table = pd.read_csv(Path(__file__).parents[1] / "results/published/published_vtab1k.csv")
    row = table[table["source_key"] == "vpt"].set_index("method")
    from petlbench.suite import load_suite
    tasks = [t.name for t in load_suite("vtab1k").tasks]
    write(tmp_path, [run_record("vtab1k", t, "linear", s, row.loc["linear", t] + 1, backbone=ORIG)
                     for t in tasks for s in (0, 1)])
    frame = csv_rows(render(tmp_path, "csv"))
    assert not any(c.endswith("*") for c in frame.loc["linear"]), "all 19 tasks: nothing marked"
    assert set(frame.loc["Δ linear vs vpt", tasks[0]:"mean (tasks)"]) == {"+1.0"}


def test_fgvc_per_dataset_and_mean_with_published_by_alias(tmp_path):
    accs = {"CUB": 90.0, "nabirds": 80.0, "OxfordFlowers": 99.0, "StanfordDogs": 85.0, "StanfordCars": 80.0}
    write(tmp_path, [run_record("fgvc", t, "vpt_deep", 0, a, params=850_000) for t, a in accs.items()])
    frame = csv_rows(render(tmp_path, "csv"))
    assert list(frame.columns[:6]) == [*accs, "mean"], "one group: one mean, no group columns"
    assert frame.loc["vpt_deep", "mean"] == "86.8"  # 434 / 5
    vpt = published(frame, "vpt_deep", "vpt")
    assert frame.loc[vpt, "CUB"] == "88.5"  # csv column `cub`, an alias of CUB
    assert frame.loc[vpt, "StanfordCars"] == "83.6"  # `stanford_cars`
    assert frame.loc[vpt, "mean"] == "89.1"  # (88.5 + 84.2 + 99.0 + 90.2 + 83.6) / 5
    assert frame.loc["Δ vpt_deep vs vpt (near match)", "CUB"] == "+1.5"
    assert frame.loc["Δ vpt_deep vs vpt (near match)", "mean"] == "-2.3"  # 86.8 - 89.1


def test_latex_bold_best_per_column_and_blocks(tmp_path):
    accs = {"CUB": 90.0, "nabirds": 80.0, "OxfordFlowers": 99.0, "StanfordDogs": 85.0, "StanfordCars": 80.0}
    records = [run_record("fgvc", t, "vpt_deep", 0, a) for t, a in accs.items()]
    records += [run_record("fgvc", t, "linear", 0, a - 10) for t, a in accs.items()]
    latex = render(write(tmp_path, records), "latex")
    lines = {line.split("&")[0].strip(): [c.strip() for c in line.rstrip(" \\").split("&")]
             for line in latex.splitlines() if "&" in line}
    vpt = next(k for k in lines if k.startswith("published: vpt\\_deep [vpt "))
    assert lines["vpt\\_deep ◆"][1] == "\\textbf{90.0}", "yours best on CUB (published 88.5); on the frontier"
    assert lines[vpt][5] == "\\textbf{83.6}", "published best on StanfordCars (yours 80.0)"
    assert lines["linear"][1] == "80.0" and not lines["$\\Delta$ vpt\\_deep vs vpt (near match)"][1].startswith("\\textbf")
    assert lines[vpt][6] == "\\textbf{89.1}", "best mean"
    rules = [line for line in latex.splitlines() if line.startswith("\\") and "rule" in line]
    assert rules == ["\\toprule", "\\midrule", "\\midrule", "\\midrule", "\\bottomrule"]  # yours | published | Δ
    assert "\\begin{tabular}{lrrrrrrrrrr}" in latex  # ... seeds, avg rank


def test_published_only_for_matching_backbones(tmp_path):
    from petlbench.report.published import match
    assert match(ORIG, "timm-pretrained", ORIG) == "exact"
    assert match(AUGREG, "timm-pretrained", ORIG) == "near"
    assert match(ORIG, "random-init", ORIG) is None, "random weights are not the paper's backbone"
    assert match("vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm-pretrained", ORIG) is None
    assert match("vit_large_patch16_224.augreg_in21k", "timm-pretrained", ORIG) is None
    write(tmp_path, [run_record("fgvc", "CUB", "linear", 0, 70.0, weights="random-init")])
    md = render(tmp_path, "md")
    assert "published: linear" not in md and "not shown: no row's backbone matches" in md
    always = csv_rows(render(tmp_path, "csv", published="always"))
    assert always.loc["Δ linear vs vpt (other backbone)", "CUB"] == "-15.3"  # 70 - 85.3
    with pytest.raises(UserError, match="--published: expected one of auto, always, never"):
        render(tmp_path, "md", published="sometimes")


def test_shipped_published_files_map_onto_their_suites():
    from petlbench.report.published import META, load_published, task_columns
    from petlbench.report.summary import suite_info
    for suite, count in (("vtab1k", 19), ("fgvc", 5)):
        table, path = load_published(suite)
        assert path.parent.name == "published" and (path.parent / "README.md").is_file()
        info = suite_info(suite, [])
        assert len(task_columns(table, info)) == count == len([c for c in table.columns if c not in META])


def test_cli_bad_input_is_one_line(tmp_path):
    from conftest import assert_one_line_error, petlbench_cli
    assert_one_line_error(petlbench_cli("table", str(tmp_path / "nope")), "nope", "no such results folder")
    failed = record("a_task", 0, "linear", 0, 0.5, 0, status="failed")
    write_atomic(tmp_path / "r" / "a.json", failed)
    assert_one_line_error(petlbench_cli("table", str(tmp_path / "r")), "no successful run records", "1 failed")
    write_atomic(tmp_path / "r" / "b.json", record("a_task", 0, "linear", 0, 0.5, 0))
    assert_one_line_error(petlbench_cli("table", str(tmp_path / "r"), "--format", "xml"), "--format", "'xml'")
    assert_one_line_error(petlbench_cli("table", str(tmp_path / "r"), "--suite", "vtab1k"), "suites here: mini")
    ok = petlbench_cli("table", str(tmp_path / "r"), "--published", "never")
    assert ok.returncode == 0 and "| linear" in ok.stdout


def test_own_suite_file_gives_order_and_groups(tmp_path):
    """A user suite YAML named in the records' `suite_file` orders the columns and defines the groups."""
    suite = tmp_path / "mine.yaml"
    suite.write_text("name: mine\ngroups: [g1, g2]\ntasks:\n  - {name: t_z, classes: 2, group: g1}\n"
                     "  - {name: t_a, classes: 2, group: g2}\n  - {name: t_m, classes: 2, group: g2}\n")
    for task, seeds in (("t_a", (0, 1)), ("t_m", (0,)), ("t_z", (0, 1))):
        for seed in seeds:
            r = record(task, 0, "linear", seed, 0.5 + 0.1 * seed, 0)  # task_index 0 everywhere: not what orders
            r.update(suite="mine", suite_file=str(suite), task_group="")
            write_atomic(tmp_path / "r" / f"{task}-{seed}.json", r)
    frame = csv_rows(render(tmp_path / "r", "csv"))
    assert list(frame.columns[:3]) == ["t_z", "t_a", "t_m"]
    assert frame.loc["linear", "mean g1"] == "55.0±7.1"  # t_z: 50, 60
    assert frame.loc["linear", "mean g2"] == "52.5", "(55 + 50) / 2; seed 1 lacks t_m, so no ±"
    assert parse(frame.loc["linear", "mean (groups)"])[0] == pytest.approx(53.75, abs=0.051)
    assert frame.loc["linear", "seeds"] == "1-2", "tasks with different numbers of seeds"


def test_python_api_table_and_plot(results):
    """petlbench.table / petlbench.plot stay callable after their modules are imported."""
    import petlbench
    import petlbench.report.plots  # noqa: F401
    import petlbench.report.tables  # noqa: F401
    assert "| linear" in petlbench.table(results, "md")
    paths = petlbench.plot(results, suite="mini")
    assert paths and all(Path(p).is_file() for p in paths)


def test_runs_of_one_label_and_seed_with_other_settings_are_not_averaged(tmp_path, capsys):
    """A default changed between two `run`s gives a second record of (label, task, seed) under another config id:
    the table shows the newest, never the mean of the two as if they were seeds, and says so."""
    old, new = record("a_task", 0, "cavpt", 0, 0.50, 10), record("a_task", 0, "cavpt", 0, 0.90, 10)
    old.update(config_id="old", run_id="old", finished_at="2026-12-01T10:00:00")
    new.update(config_id="new", run_id="new", finished_at="2026-12-07T10:00:00")
    write_atomic(tmp_path / "mini" / "new.json", new)
    write_atomic(tmp_path / "mini" / "old.json", old)  # written last: file order does not decide
    frame = pd.read_csv(io.StringIO(render(tmp_path, "csv")), dtype=str).set_index("method")
    assert frame.loc["cavpt", "a_task"] == "90.0" and frame.loc["cavpt", "seeds"] == "1"
    assert "1 run(s) repeat a (method, task, seed) with other settings" in capsys.readouterr().err
