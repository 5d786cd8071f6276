"""Published numbers (results/published/published_<suite>.csv) beside the user's, when backbones match.

Where the files are: a checkout or editable install (what researchers use) reads them from
`<repo>/results/published/`; an installed wheel reads them from `<prefix>/share/petlbench/published/`
(pyproject's data-files). Columns are the suite's task names or aliases, so no name map lives here.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import petlbench
from petlbench.errors import UserError
from petlbench.report.summary import KEYS, MAX_TEST, Stats, SuiteInfo, aggregate

MODES = ("auto", "always", "never")
META = ("method", "backbone", "trainable_params_M", "source", "test_selected")
TEST_SELECTED = "†"  # marks published rows whose source kept the best test accuracy over epochs
SHARE = Path("share") / "petlbench" / "published"


def search_paths() -> list[Path]:
    return [Path(petlbench.__file__).resolve().parents[1] / "results" / "published",
            Path(sysconfig.get_paths()["data"]) / SHARE]


def published_dir() -> Path | None:
    return next((p for p in search_paths() if p.is_dir() and any(p.glob("published_*.csv"))), None)


def not_found_message() -> str:
    return f"published numbers not found (looked in {' and '.join(str(p) for p in search_paths())})"


def load_published(suite: str) -> tuple[pd.DataFrame, Path] | None:
    """The published table for a suite name, or None when petlbench ships none for it."""
    folder = published_dir()
    path = folder / f"published_{suite}.csv" if folder else None
    if path is None or not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype={"method": str, "backbone": str, "source": str})
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("method", "backbone", "trainable_params_M") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: column {missing[0]!r} is missing; expected {', '.join(META)} and task columns")
    return table, path


def data_tag(name: str) -> str | None:
    """'vit_base_patch16_224.augreg_in21k' -> 'in21k': the pretraining data in timm's tag (last word)."""
    _, _, tag = name.partition(".")
    return tag.split("_")[-1] if tag else None


def match(name: str, weights: str, published: str) -> str | None:
    """'exact' (same timm name), 'near' (same architecture and pretraining data, another recipe) or None.

    Random weights never match; a local checkpoint is taken to be what its timm name says.
    """
    if weights == "random-init":
        return None
    if name == published:
        return "exact"
    arch, tag = name.partition(".")[0], data_tag(name)
    if tag and arch == published.partition(".")[0] and tag == data_tag(published):
        return "near"
    return None


def task_columns(table: pd.DataFrame, info: SuiteInfo) -> dict[str, str]:
    """CSV column -> the suite's task name, through task names and `aliases`; other columns are ignored."""
    names = {t: t for t in info.tasks}
    if info.suite is not None:
        names.update({a: t.name for t in info.suite.tasks for a in t.aliases})
    return {c: names[c] for c in table.columns if c not in META and c in names}


def published_frame(table: pd.DataFrame, info: SuiteInfo, methods: list[str],
                    backbone_params: float | None) -> pd.DataFrame:
    """Published rows for `methods` (record `method.name`s) in the long format of summary.records_frame."""
    columns = task_columns(table, info)
    rows = []
    for method in methods:
        found = table[table["method"] == method]
        if found.empty:
            continue
        entry = found.iloc[0]
        label = published_label(method, table)
        params = pd.to_numeric(entry["trainable_params_M"], errors="coerce") * 1e6
        for column, task in columns.items():
            value = pd.to_numeric(entry[column], errors="coerce")
            if pd.notna(value):
                rows.append({"method": label, "backbone": f"{entry['backbone']} (published)", "method_name": method,
                             "backbone_name": entry["backbone"], "weights": "published", "task": task,
                             "seed": float("nan"), "top1": float(value), "trainable_excl_head": params,
                             "backbone_params": backbone_params if backbone_params else float("nan"),
                             "source": entry.get("source", "")})
    return pd.DataFrame(rows)


def partner_method(label: str, name: str, table: pd.DataFrame) -> str:
    """The published row for a user row: the one named by its full label (`fact:variant=tt`), else by the
    method's name (`lora`, whatever its options)."""
    label = label.removesuffix(MAX_TEST)
    return label if label in set(table["method"]) else name


def published_label(method: str, table: pd.DataFrame) -> str:
    """'published: noah †' when the source selected on the test set (its `test_selected` column says yes)."""
    flags = table.loc[table["method"] == method, "test_selected"] if "test_selected" in table else pd.Series()
    selected = not flags.empty and str(flags.iloc[0]).strip().lower() == "yes"
    return f"published: {method}" + (f" {TEST_SELECTED}" if selected else "")


@dataclass
class Comparison:
    """Published rows (computed like the user's) and one difference row per user row that has a partner."""
    stats: Stats | None
    delta: pd.DataFrame  # index (label, backbone) like Stats.mean; columns as Stats.mean
    notes: list[str]


def compare(frame: pd.DataFrame, user: Stats, info: SuiteInfo, mode: str = "auto",
            every_method: bool = False) -> Comparison | None:
    """Published rows for the user's methods (`every_method`: all of them) and user minus published.

    auto: only when some row's backbone matches the published one (exact or near); always: whatever it is.
    """
    if mode not in MODES:
        raise UserError(f"--published: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "never":
        return None
    if published_dir() is None:
        if mode == "always":
            raise UserError(not_found_message())
        from petlbench.suite import packaged_suites
        return Comparison(None, pd.DataFrame(), [not_found_message()]) if info.name in packaged_suites() else None
    loaded = load_published(info.name)
    if loaded is None:
        return Comparison(None, pd.DataFrame(), [f"no published numbers for suite {info.name}"]) \
            if mode == "always" else None
    table, path = loaded
    reference = table["backbone"].iloc[0]
    rows = frame[KEYS + ["method_name", "backbone_name", "weights", "backbone_params"]].groupby(KEYS, sort=False).first()
    rows["method_name"] = [partner_method(key[0], name, table) for key, name in rows["method_name"].items()]
    levels = {key: match(row["backbone_name"], row["weights"], reference) for key, row in rows.iterrows()}
    unmatched = sorted({f"{rows.loc[k, 'backbone_name']} ({rows.loc[k, 'weights']})" for k, v in levels.items() if not v})
    pairs = [(key, level) for key, level in levels.items()
             if (level or mode == "always") and rows.loc[key, "method_name"] in set(table["method"])]
    methods = list(table["method"]) if every_method else [rows.loc[k, "method_name"] for k, _ in pairs]
    if not (any(levels.values()) or mode == "always") or not methods:
        relevant = every_method or set(rows["method_name"]) & set(table["method"])
        return Comparison(None, pd.DataFrame(), [
            f"published numbers ({path.name}) are for {reference}; not shown: no row's backbone matches "
            f"({', '.join(unmatched)}); --published always shows them anyway"] if relevant and unmatched else [])
    matched = [rows.loc[k, "backbone_params"] for k, level in levels.items() if level]
    pframe = published_frame(table, info, list(dict.fromkeys(methods)), sum(matched) / len(matched) if matched else None)
    if pframe.empty:  # none of the csv's columns is a task of this suite
        return None
    pstats = aggregate(pframe, info)
    pstats.seeds[:] = ""
    delta = {}
    for key, level in pairs:
        partner = (published_label(rows.loc[key, "method_name"], table), f"{reference} (published)")
        if partner not in pstats.mean.index:
            continue
        both = user.complete.loc[key] & pstats.complete.loc[partner]
        suffix = {"exact": "", "near": " (near match)", None: " (other backbone)"}[level]
        delta[(f"Δ {key[0]}{suffix}", key[1])] = (user.mean.loc[key] - pstats.mean.loc[partner]).where(both)
    sources = table[table["method"].isin(pframe["method_name"])].groupby("source", sort=False)["method"]
    notes = [f"published ({path.name}; {reference}; top-1 %, params as the source gives them): "
             + "; ".join(f"{source} ({', '.join(names)})" for source, names in sources)]
    if pframe["method"].str.endswith(TEST_SELECTED).any():
        notes.append(f"{TEST_SELECTED} the source reports the best test accuracy over epochs, i.e. selected on the "
                     "test set; compare with `petlbench table --report max-test` rows, not with last-epoch ones")
    if delta:
        notes.append("Δ rows: your row minus the published row, in points; a mean only when both rows have all its tasks")
    near = sorted({rows.loc[k, "backbone_name"] for k, level in pairs if level == "near"})
    if near:
        notes.append(f"near match: {', '.join(near)} has the architecture and pretraining data of {reference} "
                     "but other weights")
    if mode == "always" and unmatched:
        notes.append(f"--published always: {', '.join(unmatched)} compared with {reference} although the backbones differ")
    index = pd.MultiIndex.from_tuples(list(delta), names=KEYS)
    return Comparison(pstats, pd.DataFrame(list(delta.values()), index=index, columns=user.mean.columns), notes)
