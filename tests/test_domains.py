"""Domain generalisation: the domainbed layout (DomainBed's <dataset>/<domain>/<class>/<image> folders), the
leave-one-domain-out tasks of the pacs / officehome / terraincognita suites, their check, a real run, the table."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petlbench.data.domains import holdout, read_split, seed_hash
from petlbench.data.layouts import find_task_dir, split_sha256
from petlbench.errors import UserError
from petlbench.records import load_records
from petlbench.suite import load_suite
from tests.conftest import TINY_ARGS, assert_one_line_error, petlbench_cli

DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "elephant", "giraffe")
PER_CLASS = 5  # images per class and domain: 15 per domain, 3 of them held out for val (int(15 * 0.2))


def write_pacs(root: Path, domains=DOMAINS, classes=CLASSES, per_class: int = PER_CLASS) -> Path:
    """A tiny PACS in DomainBed's real layout: <root>/PACS/<domain>/<class>/<n>.png, 32 px PNGs whose colour
    says the class and whose brightness the domain (so a linear probe learns something)."""
    rng = np.random.default_rng(0)
    for d, domain in enumerate(domains):
        for c, cls in enumerate(classes):
            folder = root / "PACS" / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 60, (32, 32, 3)) + 40 * d
                pixels[..., c % 3] += 120
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"pic_{i:03d}.png")
    return root


def write_suite(path: Path, classes: int = len(CLASSES), extra_task: str = "") -> Path:
    tasks = "".join(f"  - {{name: {d}, classes: {classes}, group: pacs, dataset: PACS}}\n" for d in DOMAINS)
    path.write_text(
        "name: tinypacs\nlayout: domainbed\ngroups: [pacs]\n"
        f"backbone: {{name: vit_tiny_patch16_224, args: {TINY_ARGS}, pretrained: false}}\n"
        "train: {epochs: 2, warmup_epochs: 1, batch_size: 16, eval_batch_size: 64}\n"
        f"tasks:\n{tasks}{extra_task}")
    return path


@pytest.fixture
def pacs(tmp_path) -> tuple[Path, Path]:
    return write_pacs(tmp_path / "data"), write_suite(tmp_path / "tinypacs.yaml")


def test_splits_hold_out_one_domain_with_domainbeds_split(pacs):
    root, suite_file = pacs
    suite = load_suite(str(suite_file))
    task = suite.select(["cartoon"])[0]
    folder = find_task_dir(root, task)
    assert folder == root / "PACS" and task.train_domains == ["art_painting", "photo", "sketch"]
    splits = {s: read_split(folder, task, s) for s in ("train", "val", "test")}
    domain_of = {s: {p.relative_to(folder).parts[0] for p, _ in items} for s, items in splits.items()}
    assert domain_of == {"train": {"art_painting", "photo", "sketch"}, "val": {"art_painting", "photo", "sketch"},
                         "test": {"cartoon"}}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3 * 12, 3 * 3, 15]
    assert not {p for p, _ in splits["train"]} & {p for p, _ in splits["val"]}
    # labels: the class folders sorted, as ImageFolder numbers them
    assert {(p.parent.name, y) for p, y in splits["test"]} == {(c, i) for i, c in enumerate(CLASSES)}
    # DomainBed's split: RandomState(seed_hash(trial_seed 0, env index)).shuffle, the first int(0.2 n) held out
    keys = list(range(15))
    np.random.RandomState(seed_hash(0, 2)).shuffle(keys)  # photo is environment 2 of the sorted four
    photo = sorted(p for p, _ in splits["val"] if p.relative_to(folder).parts[0] == "photo")
    ordered = sorted((folder / "photo").rglob("*.png"))  # ImageFolder order: class, then file name
    assert photo == sorted(ordered[k] for k in keys[:3])
    assert holdout(15, 2) == set(keys[:3]) and seed_hash(0, 2) == seed_hash(0, 2)
    # the same domain is split the same way whichever task holds out another (the index is the dataset's)
    other = suite.select(["sketch"])[0]
    assert {p for p, _ in read_split(folder, other, "val") if "photo" in p.parts} == set(photo)


def test_data_check_reports_each_held_out_domain(pacs, capsys):
    root, suite_file = pacs
    proc = petlbench_cli("data", "check", "--suite", str(suite_file), "--data-root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "domainbed layout" in proc.stdout and "4 of 4 tasks ok" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| art_painting"))
    assert [c.strip() for c in row.split("|")[2:7]] == ["PACS", "36", "9", "15", "3/3"]
    # the data root may be the dataset folder itself
    proc = petlbench_cli("data", "check", "--suite", str(suite_file), "--data-root", str(root / "PACS"))
    assert proc.returncode == 0 and "4 of 4 tasks ok" in proc.stdout


def test_missing_domain_and_class_mismatch_are_one_line(pacs, tmp_path):
    """A class folder missing from one domain, or a missing domain folder: one line naming the folder, as the
    run's recorded failure (the run's data problem, as a missing split file is) and in data check."""
    root, suite_file = pacs
    (root / "PACS" / "photo" / "giraffe").rename(root / "PACS" / "photo" / "zebra")
    proc = petlbench_cli("run", "--methods", "linear", "--suite", str(suite_file), "--data-root", str(root),
                         "--tasks", "sketch", "--out", str(tmp_path / "r"), "--quiet")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    (record,) = load_records(tmp_path / "r")
    assert record["status"] == "failed" and "\n" not in record["error"]
    assert record["error"].startswith(f"{root / 'PACS' / 'art_painting' / 'giraffe'}: class folder not in every "
                                      "domain of task sketch") or "zebra" in record["error"]
    check = petlbench_cli("data", "check", "--suite", str(suite_file), "--data-root", str(root))
    assert check.returncode == 1 and "class folder not in every domain" in check.stdout
    (root / "PACS" / "photo" / "zebra").rename(root / "PACS" / "photo" / "giraffe")
    import shutil
    shutil.rmtree(root / "PACS" / "cartoon")
    check = petlbench_cli("data", "check", "--suite", str(suite_file), "--data-root", str(root))
    assert check.returncode == 1
    assert f"sketch: {root / 'PACS' / 'cartoon'}: domain folder not found" in check.stdout
    with pytest.raises(UserError, match="4 class folders, expected 3"):
        write_pacs(root, domains=("cartoon",), classes=(*CLASSES, "horse"))
        read_split(root / "PACS", load_suite(str(suite_file)).select(["sketch"])[0], "test")


def test_suite_keys_are_checked(tmp_path):
    bad = write_suite(tmp_path / "a.yaml", extra_task="  - {name: x, classes: 3, dataset: PACS, domain: ../etc}\n")
    with pytest.raises(UserError, match=r"tasks\[4\].domain' must be a folder name"):
        load_suite(str(bad))
    lone = tmp_path / "b.yaml"
    lone.write_text("name: b\nlayout: domainbed\ntasks:\n  - {name: photo, classes: 3, dataset: PACS}\n")
    with pytest.raises(UserError, match="no training domain"):
        load_suite(str(lone))
    noah = tmp_path / "c.yaml"
    noah.write_text("name: c\ntasks:\n  - {name: photo, classes: 3, dataset: PACS}\n")
    with pytest.raises(UserError, match="'tasks\\[0\\].dataset' is for the domainbed layout only"):
        load_suite(str(noah))


def test_packaged_suites_follow_domainbed():
    expected = {"pacs": (7, ["art_painting", "cartoon", "photo", "sketch"]),
                "officehome": (65, ["Art", "Clipart", "Product", "Real World"]),
                "terraincognita": (10, ["location_100", "location_38", "location_43", "location_46"])}
    for name, (classes, domains) in expected.items():
        suite = load_suite(name)
        assert suite.layout == "domainbed" and len(suite.groups) == 1
        assert [t.domain for t in suite.tasks] == domains and {t.classes for t in suite.tasks} == {classes}
        assert all(t.domains == sorted(domains) for t in suite.tasks)
        names = Path(suite.path).parent / "classnames" / name / "classes.txt"
        lines = [line for line in names.read_text().splitlines() if line and not line.startswith("#")]
        assert len(lines) == classes


def test_run_linear_on_a_held_out_domain_then_table(pacs, tmp_path):
    root, suite_file = pacs
    out = tmp_path / "results"
    args = ("run", "--methods", "linear", "--suite", str(suite_file), "--data-root", str(root), "--out", str(out),
            "--quiet")
    proc = petlbench_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = load_records(out)
    assert {r["task"] for r in records} == set(DOMAINS) and all(r["status"] == "success" for r in records)
    record = next(r for r in records if r["task"] == "art_painting")
    assert record["data"]["layout"] == "domainbed"
    assert record["data"]["domains"] == {"dataset": "PACS", "test": "art_painting",
                                         "train": ["cartoon", "photo", "sketch"], "holdout_fraction": 0.2,
                                         "split": "DomainBed trial_seed 0 (misc.split_dataset)"}
    assert record["protocol"]["train_splits"] == ["train", "val"] and record["protocol"]["eval_splits"] == ["test"]
    assert record["data"]["train_images"] == 45 and record["data"]["eval_images"] == 15
    task = load_suite(str(suite_file)).select(["art_painting"])[0]
    assert record["data"]["split_files_sha256"]["test"] == split_sha256("domainbed", root / "PACS", task, "test")[:16]
    # the two tasks share the dataset folder but not their data: each held-out domain is its own test set
    assert len({r["data_id"] for r in records}) == 4
    again = petlbench_cli(*args)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 4
    # the table: a column per held-out domain, then their mean (the suite's one group)
    table = petlbench_cli("table", str(out), "--format", "csv")
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split(",")
    assert header[:6] == ["method", *DOMAINS, "mean"], header
    row = dict(zip(header, table.stdout.splitlines()[1].split(",")))
    tops = {r["task"]: 100 * r["metrics"]["test_top1"] for r in records}
    assert all(float(row[d]) == pytest.approx(tops[d], abs=0.051) for d in DOMAINS)
    assert float(row["mean"]) == pytest.approx(sum(tops.values()) / 4, abs=0.051)
    # a new image in a training domain changes the listing: the finished runs are no longer done
    Image.new("RGB", (32, 32)).save(root / "PACS" / "photo" / "dog" / "pic_999.png")
    third = petlbench_cli(*args)
    assert third.returncode == 0 and "done before, skipped" not in third.stdout


def test_download_from_a_local_archive_lays_out_pacs(tmp_path):
    """The offline route of `data download pacs`: DomainBed's PACS.zip (kfold/<domain>/<class>) given with
    --archive is unpacked, laid out as <to>/PACS atomically, then checked; nothing touches the network."""
    src = write_pacs(tmp_path / "src")
    archive = tmp_path / "PACS.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((src / "PACS").rglob("*.png")):
            z.write(path, "kfold/" + path.relative_to(src / "PACS").as_posix())
    suite = write_suite(tmp_path / "tinypacs.yaml")
    to = tmp_path / "domainbed"
    proc = petlbench_cli("data", "download", str(suite), "--to", str(to), "--archive", str(archive))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (to / "PACS").iterdir()) == list(DOMAINS)
    assert not [p for p in to.iterdir() if p.name != "PACS"]  # the staging folder is gone
    assert "4 of 4 tasks ok" in proc.stdout
    again = petlbench_cli("data", "download", str(suite), "--to", str(to), "--archive", str(archive))
    assert again.returncode == 0 and "laid out before, kept" in again.stdout


def test_download_builds_terraincognita_from_local_archives(tmp_path):
    """DomainBed's TerraIncognita: the Caltech Camera Traps annotations and images (the two files its script
    fetches, given with --archive), laid out as location_<N>/<category>/ for four locations and ten categories."""
    from petlbench.data.terra import CATEGORIES, LOCATIONS
    import tarfile
    pixels = tmp_path / "px"
    pixels.mkdir()
    images, annotations, categories = [], [], [{"id": i, "name": c} for i, c in enumerate((*CATEGORIES, "deer"))]
    for location in (*LOCATIONS, "99"):
        for c in range(len(categories)):
            name = f"img_{location}_{c}.jpg"
            Image.new("RGB", (8, 8), (c * 20, 0, 0)).save(pixels / name)
            images.append({"id": name, "file_name": name, "location": location})
            annotations.append({"id": f"a{len(annotations)}", "image_id": name, "category_id": c})
    annotations.append({"id": "twice", "image_id": "img_38_0.jpg", "category_id": 1})  # bird and bobcat
    labels = tmp_path / "caltech_camera_traps.json.zip"
    with zipfile.ZipFile(labels, "w") as z:
        z.writestr("caltech_images_20210113.json", json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    tar = tmp_path / "eccv_18_all_images_sm.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        for path in sorted(pixels.iterdir()):
            t.add(path, f"eccv_18_all_images_sm/{path.name}")
    to = tmp_path / "domainbed"
    proc = petlbench_cli("data", "download", "terraincognita", "--to", str(to), "--archive", str(labels),
                         "--archive", str(tar))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = to / "terra_incognita"
    assert sorted(p.name for p in built.iterdir()) == sorted(f"location_{n}" for n in LOCATIONS)
    assert {p.name for p in (built / "location_43").iterdir()} == set(CATEGORIES)  # no deer, no location 99
    assert (built / "location_38" / "bird" / "img_38_0.jpg").is_file()
    assert (built / "location_38" / "bobcat" / "img_38_0.jpg").is_file()  # in both, as DomainBed copies it
    assert not [p for p in to.iterdir() if p.name != "terra_incognita"] and "4 of 4 tasks ok" in proc.stdout


def test_download_errors_are_one_line_and_offline(tmp_path):
    from petlbench.data.domain_download import fetch
    suite = tmp_path / "vlcs.yaml"
    suite.write_text("name: vlcs\nlayout: domainbed\ntasks:\n" + "".join(
        f"  - {{name: {d}, classes: 5, dataset: VLCS}}\n" for d in ("C", "L", "S", "V")))
    proc = petlbench_cli("data", "download", str(suite), "--to", str(tmp_path / "t"))
    assert_one_line_error(proc, "no source for 'VLCS'", "--archive")
    assert not (tmp_path / "t").exists()
    with pytest.raises(UserError, match="cannot download PACS.zip from file:.*pass its archive"):
        fetch((tmp_path / "absent.zip").as_uri(), "PACS.zip", "https://domaingeneralization.github.io/",
              tmp_path / "dl")
    assert not list((tmp_path / "dl").iterdir())  # no .part left behind
    (tmp_path / "here.zip").write_bytes(b"zip bytes")
    got = fetch((tmp_path / "here.zip").as_uri(), "PACS.zip", "", tmp_path / "dl")
    assert got == tmp_path / "dl" / "PACS.zip" and got.read_bytes() == b"zip bytes"


def test_index_named_domain_maps_by_number(tmp_path):
    """ImageNet-V2's (and ELEVATER's) class folders 0 .. C-1 are class indices, not names to sort ('10' < '2')."""
    classes = [f"n{i:08d}" for i in range(12)]
    root = write_pacs(tmp_path / "data", domains=("train",), classes=classes, per_class=1)
    write_pacs(tmp_path / "data", domains=("v2",), classes=[str(i) for i in range(12)], per_class=1)
    suite = tmp_path / "shift.yaml"
    suite.write_text("name: shift\nlayout: domainbed\ntasks:\n"
                     "  - {name: v2, classes: 12, dataset: PACS, domain: v2, train_domains: [train]}\n")
    task = load_suite(str(suite)).tasks[0]
    test = read_split(root / "PACS", task, "test")
    assert {(p.parent.name, y) for p, y in test} == {(str(i), i) for i in range(12)}
    train = read_split(root / "PACS", task, "train") + read_split(root / "PACS", task, "val")
    assert {(p.parent.name, y) for p, y in train} == {(c, i) for i, c in enumerate(classes)}


def test_shift_and_elevater_suites():
    shift = load_suite("imagenet_shift")
    assert [t.name for t in shift.tasks] == ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    assert all(t.train_domains == ["train"] and t.classes == 1000 for t in shift.tasks)
    assert "restricted to those 200 classes" in shift.description  # ImageNet-A/-R: tests/test_class_subset.py
    elevater = load_suite("elevater")
    counts = {t.name: t.classes for t in elevater.tasks}
    assert len(counts) == 20 and counts["voc-2007-classification"] == 20  # ELEVATER's 20 datasets
    assert [t.name for t in elevater.tasks if t.multilabel] == ["voc-2007-classification"]  # tests/test_multilabel.py
    assert counts["country211"] == 211 and counts["fgvc-aircraft-2013b-variants102"] == 100
    assert all(t.dataset == t.name and t.domain == "test" and t.train_domains == ["train"] for t in elevater.tasks)
    folder = Path(elevater.path).parent
    for task in elevater.tasks:  # the toolkit's class names (one a line) and templates, a file per task
        names = [x for x in (folder / "classnames" / "elevater" / f"{task.name}.txt").read_text().splitlines()
                 if x and not x.startswith("#")]
        templates = [x for x in (folder / "templates" / "elevater" / f"{task.name}.txt").read_text().splitlines()
                     if x and not x.startswith("#")]
        assert len(names) == task.classes and len(set(names)) == len(names) and templates
        assert all(t.count("{}") == 1 for t in templates)


def test_domain_order_and_labels_equal_torchvisions_imagefolder(tmp_path):
    """DomainBed reads each domain with torchvision's ImageFolder: our order and labels are its, so the 20%
    DomainBed holds out (positions in that order) is the same images; nested folders and .PNG included."""
    from torchvision.datasets import ImageFolder

    from petlbench.data.domains import domain_images, labels_of
    root = write_pacs(tmp_path / "data", classes=("TV", "Table", "alarm_clock", "b"))
    nested = root / "PACS" / "photo" / "Table" / "more"
    nested.mkdir()
    Image.new("RGB", (8, 8)).save(nested / "x.PNG")
    (root / "PACS" / "photo" / "b" / "notes.txt").write_text("not an image")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nlayout: domainbed\ntasks:\n" + "".join(
        f"  - {{name: {d}, classes: 4, dataset: PACS}}\n" for d in DOMAINS))
    task = load_suite(str(suite)).select(["sketch"])[0]
    ours = domain_images(root / "PACS" / "photo", labels_of(root / "PACS", task)["photo"])
    theirs = ImageFolder(str(root / "PACS" / "photo")).samples
    assert [(str(p), y) for p, y in ours] == [(p, y) for p, y in theirs]
