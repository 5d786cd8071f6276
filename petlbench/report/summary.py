"""Numbers behind tables and plots: per-task means over seeds, group means, the two overall means.

Kept apart from formatting so `table` and `plot` compute the same numbers, and published rows go
through exactly the same arithmetic as the user's rows.

Definitions (also printed below each table):
- a task cell is the mean over seeds of the last-epoch test top-1 (%); its std is the sample std (n-1);
- a group mean is the mean of the row's per-task means in that group; "mean (groups)" is the mean of
  the group means (VPT, SSF); "mean (tasks)" the mean of all per-task means (NOAH, FacT);
- the std of a mean is the std over seeds of the same mean computed per seed, from the seeds that have
  every task it needs;
- a mean is "complete" when the row has every task of the suite that it covers; an incomplete one is
  the mean over the tasks the row has, and tables mark it with `*`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from petlbench.errors import UserError
from petlbench.records import recency
from petlbench.report.taskmetrics import task_metric

KEYS = ["method", "backbone"]  # one table row per method label (and backbone)
GROUPS_MEAN, TASKS_MEAN, MEAN = "mean (groups)", "mean (tasks)", "mean"


@dataclass
class SuiteInfo:
    """A suite's task order and groups: from its YAML when it can be found, else from the records."""
    name: str
    tasks: list[str]
    group_of: dict[str, str]
    groups: list[str]
    suite: object | None = None  # petlbench.suite.Suite when loaded (aliases map published columns)
    note: str | None = None  # why the order came from the records

    @property
    def grouped(self) -> bool:
        return len(self.groups) > 1

    def aggregates(self) -> list[str]:
        """Mean columns in report order: per-group means and both overall means, or just one mean."""
        if not self.grouped:
            return [MEAN]
        return [group_column(g) for g in self.groups] + [GROUPS_MEAN, TASKS_MEAN]

    @property
    def headline(self) -> str:
        """The mean papers put first: the mean of group means for grouped suites (VTAB-1k)."""
        return GROUPS_MEAN if self.grouped else MEAN


def group_column(group: str) -> str:
    return f"mean {group}"


def suite_info(name: str, records: list[dict]) -> SuiteInfo:
    """The suite's YAML (the record's `suite_file`, else the packaged suite of that name), else record order."""
    from petlbench.suite import load_suite, packaged_suites

    candidates = list(dict.fromkeys(r["suite_file"] for r in records if r.get("suite_file")))
    candidates = [c for c in candidates if Path(c).is_file()]
    if name in packaged_suites():
        candidates.append(name)
    problem = None
    for candidate in candidates:
        try:
            suite = load_suite(candidate)
        except UserError as exc:
            problem = str(exc)
            continue
        if suite.name != name:
            continue
        tasks = [t.name for t in suite.tasks]
        group_of = {t.name: t.group for t in suite.tasks}
        extra = _record_order([r for r in records if r["task"] not in group_of])  # tasks the YAML lost since
        group_of.update({t: g for t, g in extra.items() if t not in group_of})
        groups = list(suite.groups) + [g for g in dict.fromkeys(extra.values()) if g and g not in suite.groups]
        return SuiteInfo(name, tasks + [t for t in extra if t not in tasks], group_of, groups, suite)
    group_of = _record_order(records)
    note = f"suite {name}: task order from the records ({problem or 'its suite file was not found'})"
    return SuiteInfo(name, list(group_of), group_of, [g for g in dict.fromkeys(group_of.values()) if g], None, note)


def _record_order(records: list[dict]) -> dict[str, str]:
    ordered = sorted(records, key=lambda r: r.get("task_index", 0))
    return {r["task"]: r.get("task_group", "") or "" for r in ordered}


REPORTS = ("last", "max-test")
MAX_TEST = " [max test]"  # the label suffix of rows selected on the test set


def reported_number(record: dict, report: str) -> float | None:
    """A --protocol paper run's source's own number for its task (last epoch, or best test epoch under max-test)."""
    reported = ((record.get("paper") or {}).get("settings") or {}).get("reported") or {}
    return reported.get("best_top1" if report == "max-test" else "top1")


def records_frame(records: list[dict], report: str = "last") -> pd.DataFrame:
    """One row per successful final run (tuning-stage runs never appear), the columns a table needs.

    report "last": the last-epoch test top-1 (the protocol's number). "max-test": the best test top-1 over the
    run's recorded curve (`--train eval_every=N`), which is selection on the test set, offered only to compare
    with papers that report it; rows are labelled so, and runs without a curve are left out.
    """
    if report not in REPORTS:
        raise UserError(f"--report: expected one of {', '.join(REPORTS)}, got {report!r}")
    rows = []
    for r in records:
        if r.get("status") != "success" or r.get("protocol", {}).get("stage") == "search":
            continue
        top1, label = task_metric(r), r["method"]["label"]  # test_top1, or a task's named metric (VOC's mAP)
        label = (r.get("paper") or {}).get("label") or label  # --protocol paper: one row per method and source
        shots = (r.get("protocol") or {}).get("shots")  # --shots K: a row per K, never averaged with another K
        label = f"{label} [{shots}-shot]" if shots else label
        label = f"{label} [base-to-new]" if (r.get("protocol") or {}).get("base_to_new") else label  # never mixed
        if report == "max-test":
            curve = r["metrics"].get("test_curve")
            if not curve:
                continue
            top1, label = max(value for _, value in curve), label + MAX_TEST
        rows.append({
            "suite": r["suite"], "task": r["task"], "method": label,
            "method_name": r["method"]["name"], "backbone_name": r["backbone"]["name"],
            "weights": r["backbone"]["weights"], "seed": r["seed"], "top1": 100.0 * top1,
            "trainable_excl_head": r["params"]["trainable_excl_head"], "backbone_params": r["params"]["backbone"],
            "weights_bytes": (r.get("weights") or {}).get("bytes", float("nan")),
            "protocol": r.get("protocol", {}).get("name", "final"),  # what published row it is compared with
            "build": str((r.get("data") or {}).get("build") or "unknown"),  # data.build; older records: unknown
            "shots": shots or 0,  # 0: all the training data
            "reported": reported_number(r, report),  # --protocol paper: its source's number for this task
            "recency": recency(r),
        })
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["backbone"] = frame["backbone_name"] + " (" + frame["weights"] + ")"
        frame = newest_per_seed(frame)
    return frame


def newest_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (suite, row, task, seed): runs of one label with other settings (a default changed between two
    `run`s) are not seeds, so only the newest counts; `frame.attrs["repeats"]` says how many were left out."""
    keys = ["suite", "method", "backbone", "task", "seed"]
    kept = frame.sort_values("recency", kind="stable").drop_duplicates(keys, keep="last")
    kept = kept.sort_index()
    kept.attrs["repeats"] = len(frame) - len(kept)
    return kept


@dataclass
class Stats:
    """Per row (index: method, backbone) and column (tasks, then aggregates()): numbers, not text."""
    mean: pd.DataFrame
    std: pd.DataFrame  # NaN where fewer than two seeds have what the cell needs
    complete: pd.DataFrame  # bool; False for a mean over fewer tasks than the suite has
    params_m: pd.Series  # trainable excluding head, M, mean over tasks
    percent: pd.Series  # of the backbone (without head)
    seeds: pd.Series  # "3", or "1-3" when tasks have different numbers of seeds
    info: SuiteInfo = field(repr=False)
    storage_kb: pd.Series | None = None  # saved task weights (trainable tensors + head), KB, mean over tasks

    def tasks_present(self) -> list[str]:
        return [t for t in self.info.tasks if self.mean[t].notna().any()]


def aggregate(frame: pd.DataFrame, info: SuiteInfo) -> Stats:
    """The numbers of every row of `frame` (columns as from records_frame; seed may be NaN for published)."""
    order = pd.MultiIndex.from_frame(frame[KEYS].drop_duplicates())
    per_seed = (frame.assign(seed=frame["seed"].fillna(-1)).groupby(KEYS + ["seed", "task"], sort=False)["top1"]
                .mean().unstack("task").reindex(columns=info.tasks))
    by_row = per_seed.groupby(level=KEYS, sort=False)
    mean, std = by_row.mean().reindex(order), by_row.std(ddof=1).reindex(order)
    complete = mean.notna()
    members = {group_column(g): [t for t in info.tasks if info.group_of.get(t) == g] for g in info.groups}
    members.update({MEAN: info.tasks, TASKS_MEAN: info.tasks, GROUPS_MEAN: [group_column(g) for g in info.groups]})
    for col in info.aggregates():  # group means come before the mean of group means
        parts = members[col]
        mean[col] = mean[parts].mean(axis=1)  # over the tasks (groups) the row has
        complete[col] = complete[parts].all(axis=1)
        per_seed[col] = _per_seed_mean(per_seed[parts], mean[parts].notna())
        std[col] = per_seed[col].groupby(level=KEYS, sort=False).std(ddof=1).reindex(order)
    per_task = frame.groupby(KEYS + ["task"], sort=False)
    params = per_task["trainable_excl_head"].mean().groupby(level=KEYS, sort=False).mean().reindex(order)
    backbone = per_task["backbone_params"].mean().groupby(level=KEYS, sort=False).mean().reindex(order)
    counts = per_task["seed"].nunique().groupby(level=KEYS, sort=False).agg(["min", "max"]).reindex(order)
    seeds_text = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(counts["min"], counts["max"])]
    stored = (per_task["weights_bytes"].mean().groupby(level=KEYS, sort=False).mean().reindex(order) / 1024
              if "weights_bytes" in frame else pd.Series(float("nan"), index=order))
    columns = info.tasks + info.aggregates()
    return Stats(mean=mean[columns], std=std[columns], complete=complete[columns], params_m=params / 1e6,
                 percent=100 * params / backbone, seeds=pd.Series(seeds_text, index=order), info=info,
                 storage_kb=stored)


def _per_seed_mean(values: pd.DataFrame, present: pd.DataFrame) -> pd.Series:
    """Per (row, seed): the mean over the columns the row has (`present`, per row); NaN for a seed lacking one."""
    present = present.reindex(values.index.droplevel("seed")).set_axis(values.index)
    lacking = (values.isna() & present).any(axis=1)
    return values.where(present).mean(axis=1).where(~lacking & present.any(axis=1))
