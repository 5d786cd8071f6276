"""Class names and prompt templates (issue 16): the packaged lists (one name per class, in label order, from their
sources), a user's `classnames:` / `templates:` keys (a list or a file), their one-line errors through the CLI,
`data check`'s report and `check_classnames`, which a CLIP run calls. No model is built."""
from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import re
from pathlib import Path

import pytest

from petlbench.classnames import PLACEHOLDER, fill, names_record
from petlbench.data.demo import SHAPES, write_task
from petlbench.errors import UserError
from petlbench.suite import check_classnames, load_suite, packaged_suites
from tests.conftest import assert_one_line_error, petlbench_cli

SUITES = {name: load_suite(name) for name in ("vtab1k", "fgvc", "demo")}
WITHOUT_NAMES = {("fgvc", "nabirds")}  # read from the data's own classes.txt (petlbench.data.datanames)


def names(suite: str, task: str) -> list[str]:
    return next(t for t in SUITES[suite].tasks if t.name == task).classnames


# the packaged lists

@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_packaged_task_has_one_name_per_class_and_templates(suite):
    for task in SUITES[suite].tasks:
        assert task.templates, task.name
        assert all(t.count(PLACEHOLDER) == 1 for t in task.templates), task.name
        if (suite, task.name) in WITHOUT_NAMES:
            assert task.classnames == [] and "classes.txt" in task.classnames_source  # read from the data
            with pytest.raises(UserError, match="has no class names"):
                check_classnames(task)
            continue
        assert len(task.classnames) == task.classes, task.name
        folded = [" ".join(n.casefold().split()) for n in task.classnames]
        assert len(set(folded)) == len(folded) and all(folded), task.name
        assert task.classnames_source and not task.classnames_source.endswith(".txt"), task.name  # its # source:
        check_classnames(task)  # what a CLIP run asks


def test_the_files_are_package_data_beside_the_suites():
    """Found through importlib.resources as the suite YAMLs are (pyproject's package-data lists them)."""
    root = importlib.resources.files("petlbench.benchmarks")
    assert (root / "classnames" / "vtab1k" / "cifar.txt").is_file()
    assert (root / "templates" / "fgvc" / "StanfordCars.txt").is_file()
    assert (root / "classnames" / "SOURCES.md").is_file()
    assert Path(str(packaged_suites()["vtab1k"])).parent == Path(str(root))


def test_vtab_natural_names_in_label_order():
    cifar = names("vtab1k", "cifar")
    assert cifar[:5] == ["apple", "aquarium fish", "baby", "bear", "beaver"] and cifar[-1] == "worm"
    assert [n.replace(" ", "_") for n in cifar] == sorted(n.replace(" ", "_") for n in cifar)  # CIFAR's meta order
    pets = names("vtab1k", "oxford_iiit_pet")  # TFDS: the official ids, cats and dogs mixed (CLIP's list differs)
    assert pets[:6] == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier", "Basset Hound", "Beagle",
                        "Bengal"] and pets[-1] == "Yorkshire Terrier"
    dtd = names("vtab1k", "dtd")
    assert dtd[:3] == ["banded", "blotchy", "braided"] and dtd[-1] == "zigzagged" and dtd == sorted(dtd)
    sun = names("vtab1k", "sun397")
    assert sun[206:208] == ["jail indoor", "jail cell"]  # TFDS's /j/jail/indoor < /j/jail_cell; CLIP swaps them
    assert names("vtab1k", "caltech101")[:5] == ["accordion", "airplane", "anchor", "ant", "background"]
    assert names("vtab1k", "svhn")[0] == "zero" and names("vtab1k", "svhn")[9] == "nine"
    assert names("vtab1k", "oxford_flowers102")[:2] == ["pink primrose", "hard-leaved pocket orchid"]


def test_vtab_specialized_and_structured_names_in_label_order():
    assert names("vtab1k", "eurosat") == [  # TFDS: AnnualCrop, Forest, HerbaceousVegetation, Highway, ..., SeaLake
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea"]
    assert names("vtab1k", "patch_camelyon") == ["lymph node", "lymph node containing metastatic tumor tissue"]
    assert names("vtab1k", "diabetic_retinopathy")[0] == "no diabetic retinopathy"
    assert names("vtab1k", "clevr_count") == ["three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    assert names("vtab1k", "clevr_dist")[:4] == ["very nearby", "nearby", "near", "far"]  # CLIP_benchmark's '' filled
    assert names("vtab1k", "kitti")[-1] == "a photo i took with no car."
    assert names("vtab1k", "smallnorb_azi")[:2] == ["0 degrees", "20 degrees"]
    assert names("vtab1k", "smallnorb_ele")[-1] == "70 degrees"
    loc = [int(n) for n in names("vtab1k", "dsprites_loc")]
    assert loc == sorted(loc) and loc[0] < 5 and loc[-1] > 95  # left to right, percent of the width
    task = next(t for t in SUITES["vtab1k"].tasks if t.name == "dsprites_loc")
    assert fill(task.templates[0], task.classnames[0]) == "an object located at position 2% on the horizontal axis"


def test_fgvc_and_demo_names():
    cub = names("fgvc", "CUB")
    assert cub[0] == "Black footed Albatross" and cub[16] == "Cardinal" and cub[-1] == "Common Yellowthroat"
    dogs = names("fgvc", "StanfordDogs")
    assert dogs[:2] == ["Chihuahua", "Japanese spaniel"] and dogs[-1] == "African hunting dog"
    cars = names("fgvc", "StanfordCars")  # the devkit's order, not alphabetical
    assert cars[:1] == ["AM General Hummer SUV 2000"] and cars[5] == "Acura Integra Type R 2001"
    assert names("fgvc", "OxfordFlowers") == names("vtab1k", "oxford_flowers102")
    assert names("demo", "shapes") == list(SHAPES)  # the generator's label = SHAPES index
    assert names("demo", "count")[0] == "one object"  # label = objects - 1
    assert names("demo", "position")[0] == "top left" and names("demo", "position")[4] == "center"


def tfds_file(relative: str) -> Path:
    """A file of the installed tensorflow-datasets package, read without importing it (that takes seconds)."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorflow-datasets is not installed (pip install petlbench[test])")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def tfds_list(relative: str, variable: str) -> list[str]:
    source = tfds_file(relative).read_text()
    return ast.literal_eval(re.search(variable + r"\s*=\s*(\[.*?\])", source, re.S).group(1))


def test_orders_match_tfds_label_names():
    """Position by position against the ClassLabel names TFDS gives the VTAB tasks' label ids."""
    ic = "image_classification/"
    assert names("vtab1k", "dtd") == tfds_file(ic + "dtd_key_attributes.txt").read_text().split()
    sun = [p.split("/", 2)[2].replace("/", " ").replace("_", " ")
           for p in tfds_file(ic + "sun397_labels.txt").read_text().split()]
    assert names("vtab1k", "sun397") == sun
    resisc = tfds_list("datasets/resisc45/resisc45_dataset_builder.py", "_LABELS")
    assert names("vtab1k", "resisc45") == [n.replace("_", " ") for n in resisc]
    pets = tfds_list("datasets/oxford_iiit_pet/oxford_iiit_pet_dataset_builder.py", "_LABEL_CLASSES")
    assert [n.lower() for n in names("vtab1k", "oxford_iiit_pet")] == [n.replace("_", " ").lower() for n in pets]
    assert names("fgvc", "StanfordCars") == tfds_list(ic + "cars196.py", "_NAMES")
    caltech = tfds_file(ic + "caltech101_labels.txt").read_text().split()
    same = sum(a.replace("_", " ") == b for a, b in zip(caltech, names("vtab1k", "caltech101")))
    assert len(caltech) == 102 and same == 102 - 13  # CLIP_benchmark renames 13 in place (faces_easy -> centered face)


# a user's suite

def user_suite(tmp_path: Path, task_keys: str = "", top: str = "", classes: int = 3) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(f"name: mine\nlayout: noah\n{top}tasks:\n  - {{name: t, classes: {classes}, group: g{task_keys}}}\n"
                    "  - {name: u, classes: 6, group: g}\n")
    return path


def test_user_suite_with_a_list_a_file_and_suite_templates(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "t.txt").write_text("# source: my labels.csv, column 2\n\ncat\n  sea   lion \n# note\ndog\n")
    suite = load_suite(str(user_suite(tmp_path, ", classnames: lists/t.txt", 'templates: ["a photo of a {}."]\n')))
    t, u = suite.tasks
    assert t.classnames == ["cat", "sea lion", "dog"] and t.classnames_source == "my labels.csv, column 2"
    assert t.templates == u.templates == ["a photo of a {}."] and u.classnames == []
    own = ', classnames: [a, b, c], templates: ["{} here"]'
    suite = load_suite(str(user_suite(tmp_path, own, 'templates: ["a {}"]\n')))
    t, u = suite.tasks
    assert t.classnames == ["a", "b", "c"] and t.templates == ["{} here"] and u.templates == ["a {}"]
    assert "mine.yaml: key 'tasks[0].classnames'" in t.classnames_source


def test_a_copied_packaged_suite_keeps_its_lists_and_a_user_suite_may_name_them(tmp_path):
    copy = tmp_path / "my_vtab.yaml"  # the usual way to change a packaged suite
    copy.write_text(Path(str(packaged_suites()["vtab1k"])).read_text().replace("name: vtab1k", "name: my_vtab"))
    assert [t.classnames for t in load_suite(str(copy)).tasks] == [t.classnames for t in SUITES["vtab1k"].tasks]
    suite = load_suite(str(user_suite(tmp_path, ", classnames: petlbench:classnames/vtab1k/eurosat.txt", classes=10)))
    assert suite.tasks[0].classnames == names("vtab1k", "eurosat")
    assert "CLIP_benchmark" in suite.tasks[0].classnames_source


@pytest.mark.parametrize("keys, top, needles", [
    (", classnames: petlbench:classnames/vtab1k/nope.txt", "", ["'tasks[0].classnames'", "not a file shipped"]),
    (", classnames: petlbench:../pyproject.toml", "", ["'tasks[0].classnames'", "not a file shipped"]),
    (", classnames: [a, 3, c]", "", ["mine.yaml", "'tasks[0].classnames'", "list of class names (strings)"]),
    (", classnames: absent.txt", "", ["'tasks[0].classnames'", "absent.txt not found"]),
    (", classnames: [a, B, b]", "", ["'tasks[0].classnames'", "'b' twice"]),
    (', templates: ["a photo of a thing."]', "", ["'tasks[0].templates'", "must hold {} exactly once"]),
    (', templates: ["a photo of a {c}."]', "", ["'tasks[0].templates'", "{c}"]),
    ("", 'templates: "a photo of a {}."\n', ["key 'templates' is a path", "as a list"]),
    ("", "templates: 7\n", ["key 'templates' must be a list of prompt templates"]),
])
def test_bad_names_or_templates_are_one_line_errors(tmp_path, keys, top, needles):
    suite = user_suite(tmp_path, keys, top)
    proc = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(tmp_path))
    assert_one_line_error(proc, *needles)


def test_a_count_mismatch_loads_data_check_reports_it_and_a_clip_run_refuses_it(tmp_path):
    root = tmp_path / "data"
    for name in ("t", "u"):
        write_task(root, name, seed=0, sizes={"train800": 8, "val200": 4, "test": 8}, kind="count")
    suite = user_suite(tmp_path, ", classnames: [one, two, three]", classes=6)
    proc = petlbench_cli("data", "check", "--suite", str(suite), "--data-root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # names are no data problem: the check passes
    lines = proc.stdout.splitlines()
    assert any(re.fullmatch(r"  t: names 3 vs classes 6 \(CLIP-style methods refuse it; .*\)", line) for line in lines)
    assert any(line.startswith("  u: no class names; CLIP-style methods refuse it") for line in lines)
    t, u = load_suite(str(suite)).tasks
    with pytest.raises(UserError, match=r"^task 't': 3 class names for 6 classes \(names from .*mine.yaml"):
        check_classnames(t)
    with pytest.raises(UserError, match="task 'u' has no class names"):
        check_classnames(u)


def test_names_record_digests_names_and_templates():
    cifar = next(t for t in SUITES["vtab1k"].tasks if t.name == "cifar")
    record = names_record(cifar)
    assert record["classnames"][:2] == ["apple", "aquarium fish"] and len(record["templates"]) == 18
    assert record["source"].startswith("openai/CLIP@d05afc4")
    other = names_record(next(t for t in SUITES["vtab1k"].tasks if t.name == "dtd"))
    assert len(record["sha256"]) == 64 and record["sha256"] != other["sha256"]
