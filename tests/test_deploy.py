"""Per-task weights: saved beside every final record, rebuilt by `eval` to the same accuracy, used by
`predict`, folded into a plain timm state dict by `export --merged` for methods that merge."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from petlbench.cli import main
from petlbench.tools.deploy import rebuild
from petlbench.records import load_records
from tests.conftest import TINY_ARGS, assert_one_line_error, petlbench_cli, write_tiny_suite


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from petlbench.data.demo import write_task
    root = tmp_path_factory.mktemp("deploy")
    write_task(root / "data", "count", seed=3, sizes={"train800": 48, "val200": 16, "test": 40})
    suite = write_tiny_suite(root / "tiny.yaml", {"count": 6}, epochs=3)
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear,bitfit,adapter", "--data-root",
                         str(root / "data"), "--out", str(root / "results"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    records = {r["method"]["name"]: r for r in load_records(root / "results")}
    paths = {p.name.split("__")[0]: p for p in (root / "results").rglob("*.json")}
    return root, records, paths


def test_every_final_run_saves_its_task_weights(trained):
    _, records, paths = trained
    for name, record in records.items():
        weights = paths[name].with_suffix(".safetensors")
        assert record["weights"]["file"] == weights.name and record["weights"]["bytes"] == weights.stat().st_size
        tensors = load_file(str(weights))
        assert sum(t.numel() for t in tensors.values()) == record["params"]["trainable"], "what trained, head included"
    assert records["linear"]["weights"]["bytes"] < records["adapter"]["weights"]["bytes"]


def test_eval_reproduces_the_recorded_accuracy_exactly(trained):
    _, records, paths = trained
    for name in records:
        proc = petlbench_cli("eval", str(paths[name]))
        assert proc.returncode == 0, proc.stderr
        assert "reproduced exactly" in proc.stdout and f"{records[name]['metrics']['test_top1']:.4%}" in proc.stdout


def test_eval_refuses_changed_data(trained, tmp_path):
    root, _, paths = trained
    import shutil
    copy = tmp_path / "data"
    shutil.copytree(root / "data", copy)
    test = copy / "count" / "test.txt"
    lines = test.read_text().splitlines()
    test.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same images, in another order and labels moved
    proc = petlbench_cli("eval", str(paths["linear"]), "--data-root", str(copy))
    assert_one_line_error(proc, "evaluation data changed")


def test_predict_prints_the_top_classes(trained):
    root, _, paths = trained
    images = sorted((root / "data" / "count" / "images" / "test").glob("*.jpg"))[:2]
    proc = petlbench_cli("predict", str(paths["bitfit"]), *map(str, images), "--top", "3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == list(map(str, images))
    assert all(len(r["top"]) == 3 and abs(sum(t["probability"] for t in r["top"]) - 1) < 1 for r in rows)
    deployed = rebuild(paths["bitfit"])  # the same answer as the model on the run's own evaluation tensors
    from petlbench.data.decode import SplitCache
    data = SplitCache(None).get(deployed.plan, ["test"], deployed.prep, train=False)
    x, _ = data.batch(torch.arange(2))
    assert [r["top"][0]["class"] for r in rows] == deployed.model(x).argmax(1).tolist()


def test_export_merged_is_a_plain_timm_state_dict(trained, tmp_path):
    _, _, paths = trained
    out = tmp_path / "bitfit.safetensors"
    proc = petlbench_cli("export", str(paths["bitfit"]), str(out), "--merged")
    assert proc.returncode == 0, proc.stderr
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=6, **TINY_ARGS)
    plain.load_state_dict(load_file(str(out)))  # strict: exactly the architecture
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), rebuild(paths["bitfit"]).model(x))
    refused = petlbench_cli("export", str(paths["adapter"]), str(tmp_path / "a.safetensors"), "--merged")
    assert_one_line_error(refused, "adapter", "cannot be merged")
    assert not (tmp_path / "a.safetensors").exists()


def test_export_to_an_unwritable_path_is_one_line_before_any_work(trained, tmp_path):
    _, _, paths = trained
    (tmp_path / "blocker").write_text("a file, not a folder")
    under_a_file = petlbench_cli("export", str(paths["bitfit"]), str(tmp_path / "blocker" / "m.safetensors"),
                                 "--merged")
    assert_one_line_error(under_a_file, "export OUT", str(tmp_path / "blocker"), "cannot write the state dict")
    (tmp_path / "folder.safetensors").mkdir()
    onto_a_folder = petlbench_cli("export", str(paths["bitfit"]), str(tmp_path / "folder.safetensors"), "--merged")
    assert_one_line_error(onto_a_folder, str(tmp_path / "folder.safetensors"), "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "folder.safetensors"], "nothing half written"


def test_no_weights_and_storage_column(trained, tmp_path):
    root, _, _ = trained
    suite = write_tiny_suite(tmp_path / "tiny.yaml", {"count": 6}, epochs=1)
    out = tmp_path / "results"
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "linear", "--data-root", str(root / "data"),
                         "--out", str(out), "--quiet", "--no-weights")
    assert proc.returncode == 0 and not list(out.rglob("*.safetensors"))
    table = petlbench_cli("table", str(root / "results"), "--storage")
    assert "storage/task (KB)" in table.stdout


def test_export_refuses_to_overwrite_the_runs_own_files(trained, tmp_path, capsys):
    root, records, paths = trained
    bitfit = paths["bitfit"]
    others = {bitfit: "the run's record", bitfit.with_suffix(".safetensors"): "the run's task weights",
              paths["linear"].with_suffix(".safetensors"): "task weights of the run",
              paths["adapter"]: "a run record", root / "tiny.yaml": "the run's suite file",
              root / "data" / "count" / "test.txt": "the run's data folder"}
    for target, what in others.items():
        before = target.read_bytes()
        in_process_error(capsys, ["export", str(bitfit), str(target), "--merged"], str(target), what,
                         "refuses to overwrite")
        assert target.read_bytes() == before
    in_process_error(capsys, ["export", str(bitfit), str(tmp_path), "--merged"], str(tmp_path), "is a folder")


def test_export_and_task_weights_follow_the_umask(trained, tmp_path):
    import os
    _, _, paths = trained
    old = os.umask(0o002)
    try:
        assert main(["export", str(paths["linear"]), str(tmp_path / "linear.safetensors"), "--merged"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "linear.safetensors").stat().st_mode & 0o777 == 0o664
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def copy_run(paths, name, folder):
    """A run's record and weights copied elsewhere (the module's own stay intact for the other tests)."""
    import shutil
    folder.mkdir()
    record = folder / paths[name].name
    shutil.copy(paths[name], record)
    shutil.copy(paths[name].with_suffix(".safetensors"), record.with_suffix(".safetensors"))
    return record


def test_changed_or_missing_weights_are_refused_by_eval_predict_export(trained, tmp_path, capsys):
    from safetensors.torch import save_file
    root, _, paths = trained
    record = copy_run(paths, "linear", tmp_path / "run")
    weights = record.with_suffix(".safetensors")
    tensors = load_file(str(weights))
    save_file({k: v * 2 for k, v in tensors.items()}, str(weights),  # a scaled head: the same argmax, not the run's
              metadata={"format": "petlbench task weights"})
    image = str(sorted((root / "data" / "count" / "images" / "test").glob("*.jpg"))[0])
    for args in (["eval", str(record)], ["predict", str(record), image],
                 ["export", str(record), str(tmp_path / "m.safetensors"), "--merged"]):
        in_process_error(capsys, args, str(weights), "weights changed since the run")
    weights.unlink()
    in_process_error(capsys, ["eval", str(record)], str(weights), "weights missing")


def test_a_run_whose_weights_changed_or_vanished_trains_again_keeping_the_old_record(trained, tmp_path, capsys):
    import shutil
    root, records, paths = trained
    out = tmp_path / "results"
    shutil.copytree(root / "results", out)
    task = out / "tiny" / "count"
    (task / paths["linear"].with_suffix(".safetensors").name).unlink()
    bitfit_weights = task / paths["bitfit"].with_suffix(".safetensors").name
    bitfit_weights.write_bytes(bitfit_weights.read_bytes()[:-4] + b"\0\0\0\0")
    command = ["--suite", str(root / "tiny.yaml"), "--methods", "linear,bitfit,adapter", "--data-root",
               str(root / "data")]
    assert main(["status", str(out), *command]) == 0
    status = capsys.readouterr().out
    assert "1 done, 0 failed, 0 running, 2 missing" in status, status
    assert "weights missing" in status and "weights changed since the run" in status
    assert main(["status", str(out)]) == 0
    plain = capsys.readouterr().out
    assert "weights missing" in plain and "weights changed since the run" in plain
    assert main(["run", *command, "--out", str(out), "--quiet"]) == 0
    again = capsys.readouterr().out
    assert again.count("training again") == 2 and again.count("done before, skipped") == 1
    kept = sorted(p.name.split("__")[0] for p in (task / "replaced").glob("*.json"))
    assert kept == ["bitfit", "linear"]
    assert (task / "replaced" / next((task / "replaced").glob("bitfit*.json")).name).read_bytes() == \
        paths["bitfit"].read_bytes(), "the old record kept as it was"
    for name in ("linear", "bitfit"):
        assert main(["eval", str(task / paths[name].name)]) == 0
    assert main(["status", str(out), *command]) == 0
    assert "3 done" in capsys.readouterr().out


def in_process_error(capsys, argv: list[str], *needles: str) -> None:
    """`petlbench.cli.main` in this process (seconds faster than a subprocess): exit 2, one line naming each needle."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("petlbench: error: "), (code, err)
    assert all(needle in lines[0] for needle in needles), (needles, lines[0])


def test_a_released_noah_subnet_is_rebuilt_for_its_task(tmp_path):
    """`noah:subnet=released` resolves its subnet per task (`Method.for_task`): eval rebuilds the same subnet, and the
    record names the resolved sizes (`method.resolved`)."""
    from petlbench.data.demo import write_task
    write_task(tmp_path / "data", "clevr_count", seed=3, sizes={"train800": 32, "val200": 8, "test": 24}, kind="count")
    args = {**TINY_ARGS, "depth": 12}  # NOAH's released subnets have 12 layers
    suite = tmp_path / "noah.yaml"
    suite.write_text("\n".join([
        "name: tiny", "layout: noah", "backbone:", "  name: vit_tiny_patch16_224", f"  args: {args}",
        "  pretrained: false", "train: {epochs: 1, warmup_epochs: 0, batch_size: 16, eval_batch_size: 64}",
        "tasks:", "  - {name: clevr_count, classes: 6, group: structured}"]) + "\n")
    proc = petlbench_cli("run", "--suite", str(suite), "--methods", "noah:subnet=released", "--data-root",
                         str(tmp_path / "data"), "--out", str(tmp_path / "results"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    (record,) = load_records(tmp_path / "results")
    assert record["method"]["resolved"]["task"] == "clevr_count"
    (path,) = (tmp_path / "results").rglob("*.json")
    proc = petlbench_cli("eval", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "reproduced exactly" in proc.stdout
