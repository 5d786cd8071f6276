"""`petlbench compare RESULTS A B`: is A better than B, worse, or can the runs not tell? A verdict, not a mean.

Runs are paired over (task, seed) within one suite, backbone and protocol (a pair trained on the same data with
the same seed); everything else is dropped and said so. Per VTAB group and overall: the mean difference A - B
(test top-1 points, last epoch), its bootstrap interval, the Wilcoxon signed-rank p and the verdict
(petlbench.report.stats holds the numbers and the rule).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from petlbench.errors import UserError
from petlbench.records import recency, record_files
from petlbench.report.stats import (A_BETTER, ALPHA, B_BETTER, BOOTSTRAP_SEED, FEWEST, LEVEL, RESAMPLES, RULE,
                                    Difference, paired)
from petlbench.report.samples import agreement, ensemble_accuracy, load_samples, oracle_accuracy
from petlbench.report.summary import suite_info
from petlbench.report.tables import describe, load_results

FORMATS = ("md", "json")
OVERALL = "overall"
PAIRING = ("pairs: the (task, seed) runs both methods have under the same suite, backbone and protocol; "
           "difference = A - B, test top-1 at the last epoch, in points")
INTERVAL = (f"interval: {LEVEL:.0%} percentile bootstrap of the mean difference, {RESAMPLES} resamples of the pairs "
            f"with replacement, numpy seed {BOOTSTRAP_SEED}")
WILCOXON = ("p: two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero_method='zsplit': zero differences are "
            "ranked and split evenly between the signs, Demšar 2006; all differences zero: p = 1; exact distribution "
            "up to 50 pairs without zeros or tied magnitudes, else the normal approximation with tie correction)")
CAVEAT = ("the pairs of one task share its test set, so with several seeds per task they are not independent; "
          "the interval and p treat them as if they were and read best with one seed per task or many tasks")


@dataclass
class Pair:
    """Two successful final records of the same (suite, backbone, protocol, task, seed): A's and B's."""
    task: str
    group: str
    seed: int
    a: dict
    b: dict
    a_path: Path | None = None  # the record files (per-sample outputs sit beside them)
    b_path: Path | None = None

    @property
    def difference(self) -> float:
        # rounded: float noise (0.6 - 0.5) must not make equal differences unequal for the rank test
        return round(100.0 * (self.a["metrics"]["test_top1"] - self.b["metrics"]["test_top1"]), 9)


@dataclass
class Section:
    """More evidence about a comparison, computed from its paired records: a title, Markdown, and its JSON."""
    title: str
    text: str
    data: dict = field(default_factory=dict)


def extra_sections(pairs: list[Pair]) -> list[Section]:
    """Per-sample evidence from the outputs beside each pair's records: how often A and B agree, and the accuracy
    of their ensemble and of the oracle (either right), which PETL_Vision reports as the case for ensembling."""
    rows, skipped = [], []
    for p in pairs:
        try:
            a, b = load_samples(p.a_path, p.a), load_samples(p.b_path, p.b)
            rows.append((p.task, p.seed, 100 * a.top1(), 100 * b.top1(), 100 * agreement(a, b),
                         100 * ensemble_accuracy(a, b), 100 * oracle_accuracy(a, b)))
        except (UserError, TypeError) as exc:  # TypeError: a record file not found (path None)
            skipped.append(f"{p.task} seed {p.seed}: {exc if isinstance(exc, UserError) else 'record file not found'}")
    if not rows:
        return []
    head = ("task", "seed", "A", "B", "agree", "ensemble", "oracle")
    mean = ("mean", "", *(sum(r[i] for r in rows) / len(rows) for i in range(2, 7)))
    text = tabulate([*rows, mean], headers=head, tablefmt="github", floatfmt=".2f", disable_numparse=False)
    text += ("\n\nagree: share of test images where A and B predict the same class; ensemble: the mean of both runs' "
             "softmax probabilities, each known on its stored top-5 only (0 elsewhere); oracle: either run right; "
             "per-sample outputs only, never used for any choice")
    if skipped:
        text += f"\n\n{len(skipped)} pair(s) without usable samples: " + "; ".join(skipped)
    data = {"pairs": [dict(zip(head, r)) for r in rows], "mean": dict(zip(head[2:], mean[2:])), "skipped": skipped}
    return [Section("per-sample: agreement, ensemble and oracle", text, data)]


@dataclass
class Comparison:
    """One suite x backbone x protocol: the pairs, the statistics per group and overall, what was dropped."""
    suite: str
    backbone: str
    protocol: str
    pairs: list[Pair]
    groups: list[tuple[str, int, Difference]]  # (group or OVERALL, tasks, statistics)
    dropped: list[str]
    duplicates: int = 0
    sections: list[Section] = field(default_factory=list)

    @property
    def overall(self) -> Difference:
        return self.groups[-1][2]


def context(record: dict) -> tuple[str, str, str]:
    """(suite, backbone, protocol) as readers see them; a paper protocol names its source."""
    backbone = record.get("backbone") or {}
    protocol = record.get("protocol") or {}
    name = str(protocol.get("name", "final"))
    source = (record.get("paper") or {}).get("source") if isinstance(record.get("paper"), dict) else None
    return (record["suite"], f"{backbone.get('name')} ({backbone.get('weights')})",
            name + (f" ({source})" if source else "") + (f", {protocol['shots']}-shot" if protocol.get("shots") else ""))


def compare(results: str | Path, a: str, b: str, suite: str | None = None) -> list[Comparison]:
    """The comparisons of A and B in every (suite, backbone, protocol) where they share a (task, seed)."""
    if a == b:
        raise UserError(f"compare: A and B are the same method label {a!r}; name two different methods")
    records = [r for r in load_results(results, suite) if r.get("status") == "success"
               and (r.get("protocol") or {}).get("stage") != "search"]
    labels = sorted({r["method"]["label"] for r in records})
    for label in (a, b):
        if label not in labels:
            raise UserError(f"compare: no successful final run of method {label!r} in {describe(results, suite)}; "
                            f"methods there: {', '.join(labels) or 'none'}")
    runs: dict[str, dict[tuple, dict]] = {a: {}, b: {}}
    duplicates = {a: 0, b: 0}
    for r in records:
        label = r["method"]["label"]
        if label not in runs:
            continue
        key = context(r) + (r["task"], r["seed"])
        if key in runs[label]:
            duplicates[label] += 1
            if recency(r) <= recency(runs[label][key]):
                continue
        runs[label][key] = r
    shared = sorted(set(runs[a]) & set(runs[b]), key=lambda k: (k[:3], runs[a][k].get("task_index", 0), k[4]))
    if not shared:
        raise UserError(f"compare: {a!r} and {b!r} share no (task, seed) under the same suite, backbone and protocol "
                        f"in {describe(results, suite)}; run both on the same tasks and seeds")
    chosen = {identity(r) for label in (a, b) for r in runs[label].values()}
    files = {identity(r): path for path, r in record_files(results) if identity(r) in chosen}  # read before: no warnings
    comparisons, contexts = [], list(dict.fromkeys(k[:3] for k in shared))
    for ctx in contexts:
        pairs = [Pair(k[3], runs[a][k].get("task_group") or "", k[4], runs[a][k], runs[b][k],
                      files.get(identity(runs[a][k])), files.get(identity(runs[b][k]))) for k in shared if k[:3] == ctx]
        order = suite_info(ctx[0], [p.a for p in pairs]).groups
        groups = [g for g in order if any(p.group == g for p in pairs)]
        rows = [(g, *_stats([p for p in pairs if p.group == g])) for g in groups] if len(groups) > 1 else []
        rows.append((OVERALL, *_stats(pairs)))
        dropped = [_dropped(label, other, runs[label], runs[other], ctx, contexts) for label, other in ((a, b), (b, a))]
        comparisons.append(Comparison(*ctx, pairs, rows, [d for d in dropped if d], duplicates[a] + duplicates[b],
                                      extra_sections(pairs)))
    return comparisons


def identity(record: dict) -> tuple:
    return record.get("run_id"), recency(record)


def _stats(pairs: list[Pair]) -> tuple[int, Difference]:
    return len({p.task for p in pairs}), paired([p.difference for p in pairs])


def _dropped(label: str, other: str, mine: dict, theirs: dict, ctx: tuple, contexts: list) -> str | None:
    """One line: the runs of `label` without a partner of `other` in this context, and those under a suite, backbone
    and protocol where the two share no (task, seed) at all."""
    alone = sorted((k for k in mine if k not in theirs and k[:3] == ctx), key=lambda k: (mine[k].get("task_index", 0), k[4]))
    elsewhere = [k for k in mine if k[:3] not in contexts]
    parts = []
    if alone:
        shown = ", ".join(f"{k[3]} seed {k[4]}" for k in alone[:6]) + (", ..." if len(alone) > 6 else "")
        parts.append(f"{len(alone)} run(s) without a {other} run of the same task and seed ({shown})")
    if elsewhere:
        where = "; ".join(sorted({" / ".join(k[:3]) for k in elsewhere}))
        parts.append(f"{len(elsewhere)} run(s) under a suite/backbone/protocol where it shares no (task, seed) with {other} ({where})")
    return f"{label}: " + "; ".join(parts) if parts else None


def sentence(diff: Difference, a: str, b: str) -> str:
    """The one-line verdict with its evidence."""
    named = {A_BETTER: f"A better ({a})", B_BETTER: f"B better ({b})"}.get(diff.verdict, diff.verdict)
    return (f"verdict: {named}: A - B = {diff.mean:+.2f} points, {LEVEL:.0%} CI [{diff.low:+.2f}, {diff.high:+.2f}], "
            f"Wilcoxon p = {diff.p:.3g}, {diff.n} pairs")


def render(results: str | Path, a: str, b: str, fmt: str = "md", suite: str | None = None) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    comparisons = compare(results, a, b, suite)
    if fmt == "json":
        return json.dumps(finite(as_json(comparisons, a, b)), indent=2) + "\n"
    parts = []
    for c in comparisons:
        rows = [[g, d.n, tasks, f"{d.mean:+.2f}", f"[{d.low:+.2f}, {d.high:+.2f}]", f"{d.p:.3g}", d.verdict]
                for g, tasks, d in c.groups]
        table = tabulate(rows, headers=["group", "pairs", "tasks", "A - B (points)", f"{LEVEL:.0%} CI", "Wilcoxon p",
                                        "verdict"], tablefmt="github", disable_numparse=True)
        notes = [PAIRING, INTERVAL, WILCOXON, RULE.replace("verdict: ", "rule: ") + " (A better when the "
                 "interval is above 0, B better when below)", CAVEAT]
        few = [g for g, _, d in c.groups if d.n < FEWEST]
        if few:
            notes.append(f"{', '.join(few)}: fewer than {FEWEST} pairs, where the exact two-sided Wilcoxon p is at best "
                         "2 / 2^n >= 0.0625: 'no detectable difference' whatever the numbers")
        notes += [f"dropped: {d}" for d in c.dropped]
        if c.duplicates:
            notes.append(f"{c.duplicates} run(s) repeat a (method, task, seed) with other settings under one label: "
                         "the newest of each is used")
        text = (f"### compare A = {a} vs B = {b}: suite {c.suite}, backbone {c.backbone}, protocol {c.protocol}\n\n"
                f"{table}\n\n**{sentence(c.overall, a, b)}**\n\n" + "\n".join(f"- {n}" for n in notes))
        text += "".join(f"\n\n#### {s.title}\n\n{s.text}" for s in c.sections)
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def as_json(comparisons: list[Comparison], a: str, b: str) -> dict:
    return {
        "a": a, "b": b, "rule": RULE, "alpha": ALPHA, "fewest_pairs": FEWEST,
        "bootstrap": {"level": LEVEL, "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED, "method": "percentile"},
        "wilcoxon": {"alternative": "two-sided", "zero_method": "zsplit", "all_zero_p": 1.0,
                     "method": "exact up to 50 pairs without zeros or tied magnitudes, else normal approximation"},
        "comparisons": [{
            "suite": c.suite, "backbone": c.backbone, "protocol": c.protocol, "verdict": c.overall.verdict,
            "groups": [{"group": g, "tasks": tasks, **d.as_dict()} for g, tasks, d in c.groups],
            "pairs": [{"task": p.task, "group": p.group, "seed": p.seed, "difference": p.difference} for p in c.pairs],
            "dropped": c.dropped, "duplicates": c.duplicates,
            "sections": [{"title": s.title, **s.data} for s in c.sections],
        } for c in comparisons],
    }


def finite(value):
    """JSON has no NaN: an undefined number (p of a single pair) is null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
