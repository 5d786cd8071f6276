"""Which published row a user's row is compared with, and how the two differ, in words.

Every row of `results/published/published_<suite>.csv` is one source's number for one method under one
selection rule (`val_last`: tuned on val, last epoch; `test_best`: best test epoch; `fixed`; `unknown`), one data
build (`tfds-png`, `noah-jpeg`, or words) and one set of backbone weights (the timm name). A user's row has the
same three: its protocol (`tune` selects on val, `final` and `paper` train fixed settings, `--report max-test`
selects on test), the `data.build` of its records (absent in older records: unknown) and its backbone. The
published row that differs in the fewest of them is the partner; every difference is said in a warning.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

SELECTIONS = ("val_last", "test_best", "fixed", "unknown")
BUILDS = ("noah-jpeg", "tfds-png")  # what a record's data.build can name besides "unknown"
RULE_OF_PROTOCOL = {"tune": "val_last", "final": "fixed", "paper": "fixed"}
EXTRA = ("source_key", "selection", "seeds", "data_build", "copy_of", "inputs", "notes", "test_selected")
CITATIONS = {  # short names for the footnote; a file of your own may use other keys (its `source` is shown)
    "vpt": "VPT (Jia et al., ECCV 2022) Table 1", "noah": "NOAH (Zhang et al., 2022) Table 1",
    "convpass": "Convpass report (Jie & Deng, 2022) Table 1", "convpass_readme": "Convpass README (PETL-ViT, seed 42)",
    "ssf": "SSF (Lian et al., NeurIPS 2022)", "fact": "FacT (Jie & Deng, AAAI 2023)",
    "petl_vision": "PETL_Vision (Mai et al., CVPR 2025) released results (tune_output, one seed)",
    "vpetl": "V-PETL Bench README (Xin et al., NeurIPS 2024 D&B)", "snell": "SNELL (Shen et al., NeurIPS 2024) Table 1",
    "davpt": "DA-VPT Table 3", "tip_adapter": "Tip-Adapter (Zhang et al., ECCV 2022) exp.log"}
RULE_WORDS = {"val_last": "val-selected (tune protocol, last epoch)",
              "fixed": "untuned (fixed settings, last epoch)",
              "test_best": "test-selected (--report max-test)", "mixed": "of mixed protocols"}


def normalise(table: pd.DataFrame) -> pd.DataFrame:
    """The columns matching needs, also for a file in the old format (one row per method, `test_selected`)."""
    table = table.copy()
    if "selection" not in table:  # the old format: test_selected yes -> test_best, no -> val_last
        flags = table["test_selected"] if "test_selected" in table else pd.Series("", index=table.index)
        table["selection"] = ["test_best" if str(f).strip().lower() == "yes" else
                              "val_last" if str(f).strip().lower() == "no" else "unknown" for f in flags]
    table["selection"] = [s if s in SELECTIONS else "unknown" for s in table["selection"].fillna("unknown")]
    table["test_selected"] = ["yes" if s == "test_best" else "no" for s in table["selection"]]  # old readers
    source = table["source"].fillna("") if "source" in table else pd.Series("", index=table.index)
    table["source"] = source
    if "source_key" not in table:
        table["source_key"] = [(s.split() or ["source"])[0].strip(",()").lower() for s in source]
    for column, default in (("data_build", "unknown"), ("copy_of", ""), ("inputs", ""), ("seeds", "")):
        table[column] = table[column].astype(object).where(table[column].notna(), default) if column in table \
            else default
    table["data_build"] = [{"tfds": "tfds-png", "noah_jpeg": "noah-jpeg"}.get(b, b) for b in table["data_build"]]
    table["data_build"] = table["data_build"].replace("", "unknown")
    return table


def citation(row: pd.Series) -> str:
    return CITATIONS.get(row["source_key"], row["source"] or row["source_key"])


def weights_tag(backbone: str) -> str:
    """'vit_base_patch16_224.orig_in21k' -> 'orig_in21k' (the weights); a name without a tag is itself."""
    return backbone.partition(".")[2] or backbone


@dataclass(frozen=True)
class Profile:
    """What a user's row is, for matching: its selection rule, data build and backbone (timm name)."""
    selection: str  # val_last | fixed | test_best | mixed
    build: str  # noah-jpeg | tfds-png | unknown | mixed
    backbone: str

    def words(self) -> str:
        build = {"unknown": "an unidentified data build", "mixed": "mixed data builds"}.get(self.build, self.build)
        return f"{RULE_WORDS.get(self.selection, self.selection)} on {build} with {weights_tag(self.backbone)} weights"


def profile(part: pd.DataFrame, report: str = "last") -> Profile:
    """The profile of the records of one table row (records_frame columns `protocol`, `build`, `backbone_name`)."""
    rules = {RULE_OF_PROTOCOL.get(p, "fixed") for p in part.get("protocol", pd.Series(["final"]))}
    builds = set(part["build"]) if "build" in part else {"unknown"}
    selection = "test_best" if report == "max-test" else (rules.pop() if len(rules) == 1 else "mixed")
    build = builds.pop() if len(builds) == 1 else "mixed"
    return Profile(selection, build if build in BUILDS + ("mixed",) else "unknown", str(part["backbone_name"].iloc[0]))


def differences(user: Profile, row: pd.Series) -> list[str]:
    """The criteria on which a published row differs from the user's: words for the warning."""
    found = []
    if row["selection"] != user.selection:
        found.append("selection rule")
    if user.build != "unknown" and row["data_build"] != user.build:
        found.append("data build")
    if row["backbone"] != user.backbone:
        found.append("backbone weights")
    return found


def closeness(user: Profile, row: pd.Series, order: int, own: bool = False) -> tuple:
    """Sort key, smallest first: fewest of (test selection, build, weights) differing, in that order of weight;
    then the row holding the numbers a --protocol paper row's source reported (`own`), the same rule, a known rule,
    an original rather than a copy, more seeds, the file's order."""
    test = (row["selection"] == "test_best") != (user.selection == "test_best")
    build = user.build != "unknown" and row["data_build"] != user.build
    weights = row["backbone"] != user.backbone
    seeds = pd.to_numeric(row["seeds"], errors="coerce")
    return (test + build + weights, test, build, weights, not own, row["selection"] != user.selection,
            row["selection"] == "unknown", bool(row["copy_of"]), -(0 if pd.isna(seeds) else seeds), order)


def reported_by(part: pd.DataFrame) -> dict[str, float]:
    """Task -> the number a --protocol paper row's source reported for it (records_frame's `reported`)."""
    if "reported" not in part:
        return {}
    return {t: float(v) for t, v in zip(part["task"], part["reported"]) if v is not None and pd.notna(v)}


def holds(row: pd.Series, numbers: dict[str, float], columns: dict[str, str]) -> bool:
    """Whether a published row is the one a paper run's source reported: its number on every such task."""
    values = {task: pd.to_numeric(row[column], errors="coerce") for column, task in columns.items()}
    return bool(numbers) and all(t in values and abs(values[t] - v) < 1e-9 for t, v in numbers.items())


def choose(user: Profile, candidates: pd.DataFrame, own: frozenset = frozenset()):
    """The index of the closest candidate row (`own`: the indices of the rows its source reported)."""
    ranked = sorted(range(len(candidates)),
                    key=lambda i: closeness(user, candidates.iloc[i], i, candidates.index[i] in own))
    return candidates.index[ranked[0]]


def row_words(row: pd.Series) -> str:
    """'noah (test_best, noah-jpeg, orig_in21k)': the source and the three things a comparison depends on."""
    copy = f", copy of {row['copy_of']}" if row["copy_of"] else ""
    return f"{row['source_key']}{copy} ({row['selection']}, {row['data_build']}, {weights_tag(row['backbone'])})"


def warning(label: str, user: Profile, row: pd.Series) -> str | None:
    """A line a reader cannot miss when the partner differs from the user's row; None when it does not."""
    differ = differences(user, row)
    if not differ:
        return None
    listed = differ[0] if len(differ) == 1 else ", ".join(differ[:-1]) + " and " + differ[-1]
    return (f"⚠ {label}: compared with {citation(row)} [{row_words(row)}] but your runs are {user.words()}: "
            f"the {listed} differ{'s' if len(differ) == 1 else ''}")
