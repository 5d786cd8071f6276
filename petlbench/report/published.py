"""Published numbers (results/published/published_<suite>.csv) beside the user's, when backbones match.

Each file holds every source's row per method (its selection rule, seeds, data build and backbone weights);
petlbench.report.sources picks, per user row, the row that matches its rule, build and weights, or the closest
one with the differences said in words. `--published all` shows every source's row and the spread across them.

Where the files are: a checkout or editable install (what researchers use) reads them from
`<repo>/results/published/`; an installed wheel reads them from `<prefix>/share/petlbench/published/`
(pyproject's data-files). Columns are the suite's task names or aliases, so no name map lives here.
"""
from __future__ import annotations

import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import petlbench
from petlbench.errors import UserError
from petlbench.plan import method_label
from petlbench.registry import parse_method_spec
from petlbench.report.sources import EXTRA, Profile, choose, citation, normalise, profile, row_words, warning
from petlbench.report.sources import holds, reported_by  # --protocol paper: the row its source reported
from petlbench.report.summary import KEYS, MAX_TEST, Stats, SuiteInfo, aggregate

MODES = ("auto", "always", "never", "all")
META = ("method", "backbone", "trainable_params_M", "source") + EXTRA
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
        table = pd.read_csv(path, dtype={c: str for c in ("method", "backbone", "source", "source_key", "selection",
                                                            "data_build", "copy_of", "inputs", "notes")})
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in ("method", "backbone", "trainable_params_M") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: column {missing[0]!r} is missing; expected {', '.join(META)} and task columns")
    return normalise(table), path


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




def published_label(row: pd.Series) -> str:
    """'published: lora [noah (test_best, noah-jpeg, orig_in21k)] †': method, source, rule, build, weights; † marks
    a source that kept the best test accuracy over epochs (selection on the test set)."""
    return f"published: {row['method']} [{row_words(row)}]" + (f" {TEST_SELECTED}" if row["selection"] == "test_best" else "")


def short_label(row: pd.Series) -> str:
    """'lora (noah)': the plot's text for a published point."""
    return f"{row['method']} ({row['source_key']})"


def published_frame(table: pd.DataFrame, info: SuiteInfo, backbone_params: float | None) -> pd.DataFrame:
    """Every row of `table` in the long format of summary.records_frame, labelled by published_label."""
    columns = task_columns(table, info)
    rows = []
    for _, entry in table.iterrows():
        params = pd.to_numeric(entry["trainable_params_M"], errors="coerce") * 1e6
        for column, task in columns.items():
            value = pd.to_numeric(entry[column], errors="coerce")
            if pd.notna(value):
                rows.append({"method": published_label(entry), "backbone": f"{entry['backbone']} (published)",
                             "method_name": entry["method"], "task": task, "seed": float("nan"), "top1": float(value),
                             "trainable_excl_head": params,
                             "backbone_params": backbone_params if backbone_params else float("nan")})
    return pd.DataFrame(rows)


def partner_method(label: str, name: str, table: pd.DataFrame) -> str:
    """The published method for a user row: the one named by its label (`fact:variant=tt`; a paper row's without
    ` [source]`) as petlbench writes it (`snell` is `snell:rank=32`), else by its name (`lora`, whatever its options)."""
    label = label.removesuffix(MAX_TEST)
    methods = set(table["method"])
    bare = label.rsplit(" [", 1)[0] if label.endswith("]") else label
    for candidate in (label, bare):
        if candidate in methods:
            return candidate
        found = [m for m in sorted(methods) if m.startswith(f"{name}:") and canonical(m) == candidate]
        if found:
            return found[0]
    return name


def canonical(published_method: str) -> str | None:
    """The label petlbench gives a published method spec ('snell:rank=32' -> 'snell'); None when it is none of ours."""
    try:
        return method_label(parse_method_spec(published_method))
    except (UserError, ValueError, TypeError):
        return None


def subset(stats: Stats, keys: list) -> Stats:
    """The rows `keys` of `stats`, in that order."""
    index = pd.MultiIndex.from_tuples(keys, names=KEYS)
    return Stats(mean=stats.mean.reindex(index), std=stats.std.reindex(index), complete=stats.complete.reindex(index),
                 params_m=stats.params_m.reindex(index), percent=stats.percent.reindex(index),
                 seeds=stats.seeds.reindex(index), info=stats.info,
                 storage_kb=None if stats.storage_kb is None else stats.storage_kb.reindex(index))


@dataclass
class Comparison:
    """Published rows (computed like the user's), one difference row per user row that has a partner, the spread
    of each method's published means across sources (`all` mode and plots), and the notes under the table."""
    stats: Stats | None
    delta: pd.DataFrame  # index (label, backbone) like Stats.mean; columns as Stats.mean
    notes: list[str]
    spread: dict = field(default_factory=dict)  # method -> (Stats of every source's row, the partner's key or None)
    shown_all: bool = False  # --published all: the spread rows belong in the table
    short: dict = field(default_factory=dict)  # published row label -> plot text


def compare(frame: pd.DataFrame, user: Stats, info: SuiteInfo, mode: str = "auto",
            every_method: bool = False) -> Comparison | None:
    """Published rows for the user's methods (`every_method`: all of them) and user minus published.

    auto: per user row, the published row of the closest selection rule, build and weights, shown when some row's
    backbone matches a published one (exact or near); always: whatever the backbone; all: every source's row.
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
    table = table.reset_index(drop=True)
    references = list(dict.fromkeys(table["backbone"]))
    rows = frame[KEYS + ["method_name", "backbone_name", "weights", "backbone_params"]].groupby(KEYS, sort=False).first()
    rows["method_name"] = [partner_method(key[0], name, table) for key, name in rows["method_name"].items()]
    profiles = {key: profile(part, "max-test" if key[0].endswith(MAX_TEST) else "last")
                for key, part in frame.groupby(KEYS, sort=False)}
    levels = {key: best_level(row["backbone_name"], row["weights"], references) for key, row in rows.iterrows()}
    unmatched = sorted({f"{rows.loc[k, 'backbone_name']} ({rows.loc[k, 'weights']})" for k, v in levels.items() if not v})
    forced = mode == "always"

    def candidates(method: str, name: str, weights: str) -> pd.DataFrame:
        found = table[table["method"] == method]
        return found[[forced or match(name, weights, b) is not None for b in found["backbone"]]]

    few_shot = {key for key, part in frame.groupby(KEYS, sort=False) if "shots" in part and part["shots"].any()}
    reported = {key: reported_by(part) for key, part in frame.groupby(KEYS, sort=False)}
    partners = {}  # user key -> table index of its published row (none for few-shot rows: report.fewshot's)
    for key, row in rows.iterrows():
        found = candidates(row["method_name"], row["backbone_name"], row["weights"])
        if (levels[key] or forced) and not found.empty and key not in few_shot:
            own = frozenset(i for i in found.index if holds(found.loc[i], reported[key], task_columns(table, info)))
            partners[key] = choose(profiles[key], found, own)
    matched = [k for k, level in levels.items() if level]
    default = majority([profiles[k] for k in matched or list(rows.index)])
    methods = list(dict.fromkeys(table["method"])) if every_method else \
        list(dict.fromkeys(rows.loc[k, "method_name"] for k in partners))
    if not (matched or forced) or not methods:
        relevant = every_method or set(rows["method_name"]) & set(table["method"])
        return Comparison(None, pd.DataFrame(), [
            f"published numbers ({path.name}) are for {', '.join(references)}; not shown: no row's backbone matches "
            f"({', '.join(unmatched)}); --published always shows them anyway"] if relevant and unmatched else [])
    pool = {m: candidates(m, default.backbone, "timm-pretrained") for m in methods}
    for key, index in partners.items():
        method = rows.loc[key, "method_name"]
        pool[method] = pd.concat([pool[method], table.loc[[index]]]).loc[lambda t: ~t.index.duplicated()]
    lead = {}  # method -> its first user row's partner, else the row closest to most of the user's rows
    for key, index in partners.items():
        lead.setdefault(rows.loc[key, "method_name"], index)
    lead.update({m: choose(default, found) for m, found in pool.items() if m not in lead and not found.empty})
    chosen = set(partners.values()) | set(lead.values())
    everything = pd.concat(list(pool.values())).loc[lambda t: ~t.index.duplicated()]  # by method, then file order
    params = [rows.loc[k, "backbone_params"] for k in matched]
    pframe = published_frame(everything, info, sum(params) / len(params) if params else None)
    if pframe.empty:  # none of the csv's columns is a task of this suite
        return None
    pstats = aggregate(pframe, info)
    pstats.seeds[:] = ""
    key_of = {i: (published_label(everything.loc[i]), f"{everything.loc[i, 'backbone']} (published)")
              for i in everything.index}
    shown = [key_of[i] for i in everything.index if (mode == "all" or i in chosen) and key_of[i] in pstats.mean.index]
    delta, notes = {}, []
    for key, index in partners.items():
        partner = key_of[index]
        if partner not in pstats.mean.index:
            continue
        level = match(rows.loc[key, "backbone_name"], rows.loc[key, "weights"], everything.loc[index, "backbone"])
        suffix = {"exact": "", "near": " (near match)", None: " (other backbone)"}[level]
        both = user.complete.loc[key] & pstats.complete.loc[partner]
        label = f"Δ {key[0]} vs {everything.loc[index, 'source_key']}{suffix}"
        delta[(label, key[1])] = (user.mean.loc[key] - pstats.mean.loc[partner]).where(both)
        notes.append(warning(key[0], profiles[key], everything.loc[index]))
    spread = {m: ([key_of[i] for i in found.index if key_of[i] in pstats.mean.index], key_of.get(lead.get(m)))
              for m, found in pool.items()}
    visible = everything.loc[[i for i in everything.index if key_of[i] in shown]]
    notes = source_notes(path, visible, profiles, mode) + [n for n in notes if n] + notes_after(visible, delta)
    near = sorted({rows.loc[k, "backbone_name"] for k, i in partners.items()
                   if match(rows.loc[k, "backbone_name"], rows.loc[k, "weights"], table.loc[i, "backbone"]) == "near"})
    if near:
        notes.append(f"near match: {', '.join(near)} has the architecture and pretraining data of the published rows "
                     "it is compared with but other weights (said in each ⚠ line)")
    if forced and unmatched:
        notes.append(f"--published always: {', '.join(unmatched)} compared with {', '.join(references)} although "
                     "the backbones differ")
    index = pd.MultiIndex.from_tuples(list(delta), names=KEYS)
    return Comparison(subset(pstats, shown), pd.DataFrame(list(delta.values()), index=index, columns=user.mean.columns),
                      notes, {m: (subset(pstats, keys), partner) for m, (keys, partner) in spread.items() if keys},
                      mode == "all", {key_of[i]: short_label(everything.loc[i]) for i in everything.index})


def best_level(name: str, weights: str, references: list[str]) -> str | None:
    levels = [match(name, weights, b) for b in references]
    return "exact" if "exact" in levels else "near" if "near" in levels else None


def majority(profiles: list[Profile]) -> Profile:
    """The profile most of the user's rows have: what methods they did not run are matched with (plots)."""
    return max(profiles, key=profiles.count)


def source_notes(path: Path, visible: pd.DataFrame, profiles: dict, mode: str) -> list[str]:
    cited = visible.drop_duplicates("source_key")
    notes = [f"published ({path.name}; top-1 %, params as the source gives them; each row: method [source "
             "(selection rule, data build, backbone weights)]): "
             + "; ".join(f"{r['source_key']} = {citation(r)}" for _, r in cited.iterrows())]
    notes.append("selection rules: val_last = tuned on val, test after the last epoch; test_best = the best test "
                 f"accuracy over epochs, i.e. selected on the test set ({TEST_SELECTED}); fixed = untuned settings, "
                 "last epoch; your tune runs are compared with val_last rows, final runs with the closest (val_last), "
                 "--report max-test with test_best")
    if any(p.build == "unknown" for p in profiles.values()):
        notes.append("your records do not identify their data build (no data.build): rows are matched on the "
                     "selection rule and weights only (VTAB-1k's two builds differ by up to 15 points on cifar)")
    if mode == "all":
        notes.append("spread: per method, the lowest and highest published value over every source's row shown "
                     "above (any rule, build and weights; means only from rows with every task)")
    return notes


def notes_after(visible: pd.DataFrame, delta: dict) -> list[str]:
    notes = []
    raw = visible[visible["inputs"] == "unnormalized"]
    if not raw.empty:
        which = ", ".join(f"{r['method']} ({r['source_key']})" for _, r in raw.drop_duplicates("method").iterrows())
        notes.append(f"⚠ un-normalised inputs: {which} were trained on images scaled to [0, 1] without mean/std "
                     "normalisation (PETL_Vision's data pipeline); petlbench and the other sources normalise with "
                     "the backbone's mean/std")
    if delta:
        notes.append("Δ rows: your row minus the published row of the source named after 'vs', in points; a mean "
                     "only when both rows have all its tasks")
    return notes
