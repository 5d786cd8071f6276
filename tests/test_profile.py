"""`petlbench profile` measures the real loop on synthetic VTAB-sized data (tiny model here)."""
import json

from tests.conftest import TINY_BACKBONE_ARGS, petlbench_cli


def test_profile_reports_throughput_and_memory():
    result = petlbench_cli("profile", "--methods", "linear,vpt_deep:tokens=2", "--backbone", "vit_tiny_patch16_224",
                           "--backbone-args", TINY_BACKBONE_ARGS, "--images", "64", "--eval-images", "64",
                           "--epochs", "1", "--train", "batch_size=32", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["method"] for r in rows] == ["linear", "vpt_deep:tokens=2"]
    for r in rows:
        assert r["train_img_per_s"] > 0 and r["eval_img_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["input"] == "32x32" and r["batch_size"] == 32 and r["device"] == "cpu"
    assert rows[1]["trainable"] - rows[0]["trainable"] == 2 * 2 * 48
    # FLOPs of a training image: the linear probe's backward stops at the head; prompts need the whole backward
    assert 0 < rows[0]["train_gflops_per_image"] < rows[1]["train_gflops_per_image"]
    assert rows[0]["achieved_tflops"] > 0 and "fraction_of_bf16_peak" not in rows[0], "a peak only on known GPUs"
