"""Every built-in method learns at its untuned defaults (its paper's recipe and values), on the demo suite."""
from __future__ import annotations

import petlbench
from petlbench.registry import BUILTIN


def test_every_builtin_method_learns_at_its_defaults(demo_root, tmp_path):
    """Lower training loss at the end than at the first step, and test top-1 well above chance (1/6)."""
    records = petlbench.run(suite="demo", methods=",".join(BUILTIN), tasks=["count"], data_root=str(demo_root),
                            out=str(tmp_path), progress=False, log=lambda line: None)
    assert [r["method"]["name"] for r in records] == list(BUILTIN)
    for r in records:
        assert r["status"] == "success", (r["method"]["name"], r["error"])
        m = r["metrics"]
        assert m["train_loss_last_epoch"] < m["train_loss_first_step"], (r["method"]["name"], m)
        assert m["test_top1"] > 1.5 / 6, (r["method"]["name"], m["test_top1"])
        assert r["recipe"]["defaults"], "the record says where the untuned defaults come from"
