"""Per-task weights: saved beside every final record, rebuilt by `eval` to the same accuracy, used by
`predict`, folded into a plain timm state dict by `export --merged` for methods that merge."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

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
