"""Every published source as data, and which of them a user's row is compared with (rule, build, weights).

Records are written in the runner's format (schema, protocol, data.build when the record has one, metrics, params);
the published numbers are the shipped files, checked against the research pass's reference files.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pandas as pd
import pytest

from petlbench.records import SCHEMA, write_atomic
from petlbench.report.published import load_published
from petlbench.report.tables import render
from petlbench.suite import load_suite

ROOT = Path(__file__).parents[1]
SHIPPED = ROOT / "results" / "published"
REFERENCE = Path(__file__).parent / "data" / "published_sources"  # verbatim copies of shared/reference/*_sources.csv
SHARED = Path("/work/shared/reference")
AUGREG, ORIG = "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.orig_in21k"
VIT_B = 85_798_656
VTAB = [t.name for t in load_suite("vtab1k").tasks]
GROUPS = [[t.name for t in load_suite("vtab1k").tasks if t.group == g] for g in ("natural", "specialized", "structured")]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record(task, method, seed, top1, *, protocol="final", build=None, backbone=ORIG, params=0, curve=None):
    """A successful final record as the runner writes it (data.build only when given: older records lack it)."""
    tasks = load_suite("vtab1k").tasks
    index = VTAB.index(task)
    r = {"schema": SCHEMA, "run_id": f"{task}-{method}-{seed}-{protocol}-{build}-{backbone}", "status": "success",
         "suite": "vtab1k", "task": task, "task_index": index, "task_group": tasks[index].group, "seed": seed,
         "method": {"name": method, "label": method}, "backbone": {"name": backbone, "weights": "timm-pretrained"},
         "protocol": {"name": protocol, **({"stage": "final"} if protocol == "tune" else {})},
         "data": {"root": "/data", "layout": "noah"}, "metrics": {"test_top1": top1 / 100},
         "params": {"trainable_excl_head": params, "backbone": VIT_B}}
    if build:
        r["data"]["build"] = build
    if curve:
        r["metrics"]["test_curve"] = [[10, (top1 - 1) / 100], [20, top1 / 100], [30, (top1 - 0.5) / 100]]
    return r


def results(folder: Path, records: list[dict]) -> Path:
    for r in records:
        write_atomic(folder / "vtab1k" / f"{r['run_id']}.json", r)
    return folder


def table(folder: Path, **kwargs) -> pd.DataFrame:
    text = render(folder, "csv", **kwargs)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False).set_index("method")


def published_rows(frame: pd.DataFrame, method: str) -> list[str]:
    return [label for label in frame.index if label.startswith(f"published: {method} [")]


# --- the shipped files are the reference's numbers ---

@pytest.mark.parametrize("suite", ["vtab1k", "fgvc"])
def test_every_shipped_number_equals_the_reference(suite):
    reference, shipped = rows(REFERENCE / f"{suite}_sources.csv"), rows(SHIPPED / f"published_{suite}.csv")
    assert len(shipped) == len(reference) == {"vtab1k": 78, "fgvc": 28}[suite]
    numbers = [c for c in reference[0] if c not in ("method", "backbone", "source", "selection", "seeds",
                                                    "data_build", "notes")]
    builds = {"tfds": "tfds-png", "noah_jpeg": "noah-jpeg"}
    for ref, row in zip(reference, shipped):
        assert {c: row[c] for c in numbers} == {c: ref[c] for c in numbers}, "the digits as printed, unrounded"
        assert (row["method"], row["source"], row["selection"], row["seeds"], row["notes"]) == \
            (ref["method"], ref["source"], ref["selection"], ref["seeds"], ref["notes"])
        assert row["data_build"] == builds.get(ref["data_build"], ref["data_build"])
        assert row["selection"] in ("val_last", "test_best", "fixed", "unknown") and row["source_key"]
        ssf = row["method"] == "ssf" and "ssf" in (row["source_key"], row["copy_of"])
        gps = row["method"] == "gps"  # GPS's code loads the augreg npz too (models/vision_transformer.py @72e0c31)
        assert row["backbone"] == (AUGREG if ssf or gps else ref["backbone"]), "only SSF's and GPS's runs change weights"
    keys = [(r["method"], r["source_key"], r["selection"]) for r in shipped]
    assert len(set(keys)) == len(keys), "one row per method, source and rule: table labels are unique"


def test_fewshot_sources_ship_as_their_own_file():
    reference, shipped = rows(REFERENCE / "fewshot_sources.csv"), rows(SHIPPED / "published_fewshot.csv")
    assert len(shipped) == len(reference) == 201
    assert all({k: r[k] for k in ref} == ref for r, ref in zip(shipped, reference))
    assert {r["source_key"] for r in shipped} == {"tip_adapter", "petl_vision"}


def test_reference_copies_are_the_shared_files():
    if not SHARED.is_dir():
        pytest.skip("shared/reference is not on this machine (the copies in tests/data are what the test reads)")
    for name in ("vtab1k_sources.csv", "fgvc_sources.csv", "fewshot_sources.csv"):
        assert (REFERENCE / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_test_selected_is_derived_from_selection_and_old_files_still_read(tmp_path):
    from petlbench.report.sources import normalise
    table, _ = load_published("vtab1k")
    assert ((table["test_selected"] == "yes") == (table["selection"] == "test_best")).all()
    old = pd.DataFrame({"method": ["lora", "linear"], "backbone": [ORIG, ORIG], "cifar": [67.1, 63.4],
                        "trainable_params_M": [0.29, 0.0], "source": ["NOAH (Zhang et al., 2022)", "VPT Table 1"],
                        "test_selected": ["yes", "no"]})
    got = normalise(old)
    assert list(got["selection"]) == ["test_best", "val_last"] and list(got["source_key"]) == ["noah", "vpt"]
    assert list(got["data_build"]) == ["unknown", "unknown"]


# --- which row a user's row is compared with ---

def lora_runs(protocol="tune", build=None, backbone=ORIG, curve=False):
    return [record(t, "lora", s, 70 + s, protocol=protocol, build=build, backbone=backbone, params=294_912,
                   curve=curve) for t in VTAB for s in (0, 1)]


def test_a_val_selected_tune_run_is_compared_with_a_val_last_row_not_a_test_best_one(tmp_path):
    frame = table(results(tmp_path, lora_runs(build="noah-jpeg")))
    [shown] = published_rows(frame, "lora")
    assert shown == "published: lora [petl_vision (val_last, noah-jpeg, orig_in21k)]", "not NOAH's test_best row"
    assert "Δ lora vs petl_vision" in frame.index
    published = pd.read_csv(SHIPPED / "published_vtab1k.csv")
    row = published[(published["method"] == "lora") & (published["selection"] == "val_last")].iloc[0]
    assert frame.loc["Δ lora vs petl_vision", "cifar"] == f"{70.5 - row['cifar']:+.1f}"
    md = render(tmp_path, "md")
    assert "⚠ lora" not in md, "rule, build and weights all match: nothing to warn about"


def test_a_max_test_report_is_compared_with_a_test_best_row(tmp_path):
    frame = table(results(tmp_path, lora_runs(build="noah-jpeg", curve=True)), report="max-test")
    [shown] = published_rows(frame, "lora")
    assert "(test_best, noah-jpeg, orig_in21k)" in shown and shown.endswith(" †")
    assert "Δ lora [max test] vs petl_vision" in frame.index, "one seed on the same build: PETL_Vision before NOAH"


def test_a_build_mismatch_and_a_weights_mismatch_are_said_in_words(tmp_path):
    runs = lora_runs(build="tfds-png", backbone=AUGREG)
    runs += [record(t, "vpt_deep", 0, 70, protocol="tune", build="tfds-png", params=460_000) for t in VTAB]
    md = render(results(tmp_path, runs), "md")
    lines = {line.split(":")[0]: line for line in md.splitlines() if line.startswith("⚠")}
    assert "⚠ vpt_deep" not in lines, "VPT's row: val_last, tfds-png, orig_in21k, like the run"
    lora = lines["⚠ lora"]
    assert "compared with PETL_Vision" in lora and "(val_last, noah-jpeg, orig_in21k)" in lora
    assert "your runs are val-selected (tune protocol, last epoch) on tfds-png with augreg_in21k weights" in lora
    assert "the data build and backbone weights differ" in lora
    assert "published: vpt_deep [vpt (val_last, tfds-png, orig_in21k)]" in md, "the build decides: VPT's tfds row"


def test_the_build_chooses_the_source_of_the_same_build(tmp_path):
    runs = [record(t, "vpt_deep", 0, 70, protocol="tune", build="noah-jpeg") for t in VTAB]
    frame = table(results(tmp_path, runs))
    assert published_rows(frame, "vpt_deep") == ["published: vpt_deep [petl_vision (val_last, noah-jpeg, orig_in21k)]"]


def test_ssf_on_its_own_weights_is_compared_with_ssfs_row(tmp_path):
    """Fault 9: SSF's rows carry the augreg weights its code loads, so an augreg max-test run meets SSF's own row."""
    runs = [record(t, "ssf", 0, 75, build="noah-jpeg", backbone=AUGREG, params=205_824, curve=True) for t in VTAB]
    frame = table(results(tmp_path, runs), report="max-test")
    assert published_rows(frame, "ssf") == ["published: ssf [ssf (test_best, noah-jpeg, augreg_in21k)] †"]
    assert "⚠ ssf" not in render(tmp_path, "md", report="max-test")


def test_a_final_run_without_a_build_is_matched_and_says_what_it_lacks(tmp_path):
    md = render(results(tmp_path, [record("cifar", "linear", 0, 60)]), "md")
    assert "published: linear [vpt (val_last, tfds-png, orig_in21k)]" in md, "no test selection; VPT's 5 seeds"
    assert "your records do not identify their data build" in md
    assert "⚠ linear: compared with VPT" in md and "untuned (fixed settings, last epoch)" in md


# --- --published all and the spread ---

def headline(row: dict) -> float:
    """The mean of the three group means, VTAB-1k's headline, computed here from the file's digits."""
    return sum(sum(float(row[t]) for t in g) / len(g) for g in GROUPS) / 3


def test_published_all_shows_every_source_and_the_spread(tmp_path):
    frame = table(results(tmp_path, lora_runs(build="noah-jpeg")), published="all")
    shipped = [r for r in rows(SHIPPED / "published_vtab1k.csv") if r["method"] == "lora"]
    shown = published_rows(frame, "lora")
    assert len(shown) == len(shipped) == 5 and any("[noah (test_best" in s for s in shown)
    assert "published: lora [vpetl, copy of noah (test_best, noah-jpeg, orig_in21k)] †" in shown
    spread = frame.loc["spread: lora (5 rows)"]
    means = [headline(r) for r in shipped]
    assert spread["mean (groups)"] == f"{min(means):.1f}-{max(means):.1f}" == "74.6-76.0"
    cifar = [float(r["cifar"]) for r in shipped]
    assert spread["cifar"] == f"{min(cifar):.1f}-{max(cifar):.1f}"
    assert list(frame.index).count("Δ lora vs petl_vision") == 1, "one difference, against the matched source"
    md = render(tmp_path, "md", published="all")
    assert "spread: per method, the lowest and highest published value" in md


def test_petl_vision_rows_say_their_inputs_were_not_normalised(tmp_path):
    """Fault 8: PETL_Vision trained ln (and its other rows) on un-normalised images; say so where shown."""
    md = render(results(tmp_path, [record(t, "ln", 0, 70, protocol="tune", build="noah-jpeg") for t in VTAB]), "md")
    assert "published: ln [petl_vision (val_last, noah-jpeg, orig_in21k)]" in md
    assert "⚠ un-normalised inputs: ln (petl_vision)" in md and "without mean/std normalisation" in md
    vpt = render(results(tmp_path / "b", [record("cifar", "linear", 0, 60, protocol="tune", build="tfds-png")]), "md")
    assert "un-normalised" not in vpt, "VPT's rows normalise"
    assert "un-normalised" in (SHIPPED / "README.md").read_text()


# --- the plot's spread bar ---

def test_plot_draws_the_spread_across_sources_as_a_bar(tmp_path):
    import xml.etree.ElementTree as ET
    from matplotlib import rc_context
    from petlbench.report.plots import draw
    from petlbench.report.tables import load_results, suite_parts
    folder = results(tmp_path, lora_runs(build="noah-jpeg"))
    [(_, _, stats, comparison)] = list(suite_parts(load_results(folder, None), "here", "all", every_method=True))
    figure = draw("vtab1k", stats, comparison.stats, comparison.spread, comparison.short)
    [bars] = [c for c in figure.axes[0].collections if c.get_gid() == "published-spread"]
    segments = {round(s[0][0], 4): (round(s[0][1], 2), round(s[1][1], 2)) for s in bars.get_segments()}
    shipped = [r for r in rows(SHIPPED / "published_vtab1k.csv") if r["method"] == "lora"]
    means = [headline(r) for r in shipped]
    assert segments[0.553] == (round(min(means), 2), round(max(means), 2)), "at the matched row's params (PETL_Vision)"
    assert len(segments) >= 10, "every method with several sources that differ"
    svg = io.BytesIO()
    with rc_context({"svg.fonttype": "none"}):  # as `petlbench plot` writes it: text stays text
        figure.savefig(svg, format="svg")
    ids = {e.get("id") for e in ET.fromstring(svg.getvalue()).iter() if e.get("id")}
    assert "published-spread" in ids


# --- the suites' weights ---

def test_suites_default_to_the_weights_of_their_sources(tmp_path):
    import timm
    from petlbench.plan import plan_one, resolve_backbone
    from petlbench.registry import parse_method_spec
    from petlbench.suite import load_suite as load
    assert ORIG in timm.list_pretrained("vit_base_patch16_224*")
    assert load("vtab1k").backbone["name"] == ORIG and load("fgvc").backbone["name"] == ORIG

    def config_id(suite, name=None):
        spec = resolve_backbone(suite, Path("/nonexistent"), name, None, None, True, None, None)
        run = plan_one(suite, suite.tasks[0], parse_method_spec("linear"), spec, 0, {}, None, suite.protocol("final"),
                       Path("/nonexistent"))
        return run.config()["backbone"]["name"], run.config_id()

    old = tmp_path / "vtab1k.yaml"  # the suite as it was: augreg weights
    old.write_text((ROOT / "benchmarks" / "vtab1k.yaml").read_text().replace(f"name: {ORIG}", f"name: {AUGREG}"))
    before = config_id(load(str(old)))
    now = config_id(load("vtab1k"))
    assert now[0] == ORIG and before[0] == AUGREG and now[1] != before[1], "a new default is a new configuration"
    assert config_id(load("vtab1k"), AUGREG) == before, "--backbone ...augreg_in21k finds the runs made before"


# --- fault 9: SSF's parameter count, one convention ---

def test_readme_gives_ssfs_published_params_head_excluded_as_the_csv():
    csv_value = next(float(r["trainable_params_M"]) for r in rows(SHIPPED / "published_vtab1k.csv")
                     if r["method"] == "ssf" and r["source_key"] == "ssf")
    [line] = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `ssf` |")]
    paper = line.split("|")[5].strip()
    assert paper.startswith(f"{csv_value:.2f}M"), (paper, csv_value)
    assert math.isclose(205_824 / 1e6, csv_value, abs_tol=0.005), "petlbench's count, head excluded"
