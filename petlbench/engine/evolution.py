"""NOAH's evolutionary search over subnets (ZhangYuanhan-AI/NOAH @e9c55f3 evolution.py, `EvolutionSearcher`, itself
AutoFormer's), written anew: a random population under the parameter limit, then per generation the top
candidates by val top-1 parent mutations (a module type's depth redrawn) and crossovers (each module type's sizes
from one of two parents), topped up with random ones. Every candidate is scored once (`score`, the supernet's
val top-1); the test split never reaches it. Deterministic given `rng`.

Sizes: evolution.py's defaults at the official population 50: top 10 (`--select-num`), 25 mutations and 25
crossovers (half the population each here), m_prob 0.2, s_prob 0.4, at most 10 tries per wanted candidate.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from petlbench.engine.supernet import Sizes, sample
from petlbench.methods.noah import KINDS

M_PROB, S_PROB = 0.2, 0.4  # evolution.py --m_prob, --s_prob


def key(sizes: Sizes) -> tuple:
    return tuple(tuple(sizes[kind]) for kind in KINDS)


def occupied(sizes: list[int]) -> int:
    """A module type's depth: its leading blocks before the first 0 (evolution.py's cur_depth)."""
    return next((i for i, v in enumerate(sizes) if v == 0), len(sizes))


@dataclass
class Evolution:
    choices: list[int]
    depths: list[int]  # how many leading blocks a module type may occupy
    depth: int
    limit: float  # parameters, head excluded
    count: Callable[[Sizes], int]
    score: Callable[[Sizes], float]
    rng: random.Random
    population: int = 50
    generations: int = 15
    seen: dict[tuple, dict] = field(default_factory=dict)  # every candidate tried: its sizes, params, val top-1

    @property
    def select(self) -> int:
        return max(1, self.population // 5)

    def legal(self, sizes: Sizes) -> bool:
        """New, under the limit, then scored (evolution.py's `is_legal`)."""
        k = key(sizes)
        if k in self.seen:
            return False
        params = self.count(sizes)
        self.seen[k] = {"sizes": sizes, "params": params, "val_top1": None}
        if params > self.limit:
            return False
        self.seen[k]["val_top1"] = self.score(sizes)
        return True

    def gather(self, make: Callable[[], Sizes], wanted: int, tries: int) -> list[Sizes]:
        found = []
        while len(found) < wanted and tries > 0:
            tries -= 1
            sizes = make()
            if self.legal(sizes):
                found.append(sizes)
        return found

    def mutate(self, parents: list[Sizes]) -> Sizes:
        child = {kind: list(v) for kind, v in self.rng.choice(parents).items()}
        for kind in KINDS:
            if self.rng.random() < M_PROB:
                current = occupied(child[kind])
                new = self.rng.choice(self.depths) if self.rng.random() < S_PROB else current
                if new > current:
                    child[kind] = (child[kind][:current] + [self.rng.choice(self.choices) for _ in range(new - current)]
                                   + [0] * (self.depth - new))
                else:
                    child[kind] = child[kind][:new] + [0] * (self.depth - new)
        return child

    def cross(self, parents: list[Sizes]) -> Sizes:
        a, b = self.rng.choice(parents), self.rng.choice(parents)
        return {kind: list(self.rng.choice([a[kind], b[kind]])) for kind in KINDS}

    def run(self) -> dict:
        """The search; the best candidate (val top-1, then fewer parameters, then the first found) and the history."""
        def random_one():
            return sample(self.choices, self.depths, self.depth, self.rng)
        budget = 100 * self.population  # a limit no random subnet meets must end, not loop (evolution.py would)
        candidates = self.gather(random_one, self.population, budget)
        top: list[Sizes] = []
        history = []
        for generation in range(self.generations + 1):
            top = self.best(top + candidates)[:self.select]
            history.append({"generation": generation, "top_val_top1": [self.seen[key(s)]["val_top1"] for s in top]})
            if generation == self.generations or not top:
                break
            half = self.population // 2
            candidates = self.gather(lambda: self.mutate(top), half, 10 * half)
            candidates += self.gather(lambda: self.cross(top), half, 10 * half)
            candidates += self.gather(random_one, self.population - len(candidates), budget)
        scored = [v for v in self.seen.values() if v["val_top1"] is not None]
        return {"chosen": top[0] if top else None, "history": history, "evaluated": len(scored),
                "over_limit": len(self.seen) - len(scored)}

    def best(self, candidates: list[Sizes]) -> list[Sizes]:
        unique = list({key(s): s for s in candidates}.values())
        return sorted(unique, key=lambda s: (-self.seen[key(s)]["val_top1"], self.seen[key(s)]["params"]))
