"""Where a run's training settings come from (petlbench.plan.train_layers): the recipe < its epochs for K shots
(CoOp's schedule by shots) < the method's paper departures < the suite's `train:` < --train, and the layer that set
each value (the record's `recipe.train_from`). Planning only: nothing is built or trained."""
from __future__ import annotations

import dataclasses

import pytest

from petlbench.plan import resolve_train, resolve_with_sources
from petlbench.recipes import RECIPES, shot_schedule
from petlbench.registry import parse_method_spec
from petlbench.suite import load_suite


@pytest.fixture(scope="module")
def bare():
    """The CLIP demo's suite without any training settings of its own."""
    return dataclasses.replace(load_suite("demo-clip"), train={})


@pytest.mark.parametrize("shots,epochs", [(1, 50), (2, 100), (3, 100), (4, 100), (5, 100), (8, 200), (16, 200),
                                          (32, 200)])
def test_coops_epochs_by_shots(shots, epochs):
    # KaiyangZhou/CoOp scripts/coop/main.sh with COOP.md: rn50_ep50 (1 shot), rn50_ep100 (2, 4), rn50 (8, 16)
    assert shot_schedule(RECIPES["coop"], shots) == {"epochs": epochs}


def test_no_schedule_without_shots_or_for_recipes_without_one():
    assert shot_schedule(RECIPES["coop"], None) == {} and shot_schedule(RECIPES["vpt"], 4) == {}
    assert shot_schedule(RECIPES["noah"], 1) == {}


def test_coop_trains_by_its_shots_and_the_record_says_so(bare):
    coop = parse_method_spec("coop")
    train, sources = resolve_with_sources(coop, bare, {}, shots=4)
    assert (train.epochs, train.batch_size, train.lr, train.warmup_epochs) == (100, 32, 0.002, 1)
    assert sources["epochs"] == "recipe coop at 4 shots" and sources["lr"] == sources["batch_size"] == "recipe coop"
    train, sources = resolve_with_sources(coop, bare, {})  # all the data: CoOp's 200 epochs
    assert train.epochs == 200 and sources["epochs"] == "recipe coop"
    assert resolve_train(parse_method_spec("mvlpt"), bare, {}, shots=1).epochs == 50, "MVLPT trains on CoOp's configs"


def test_a_methods_departure_beats_the_shots_schedule(bare):
    train, sources = resolve_with_sources(parse_method_spec("cocoop"), bare, {}, shots=4)
    assert (train.epochs, train.batch_size) == (10, 1) and sources["epochs"] == sources["batch_size"] == "method cocoop"


def test_the_suite_and_the_command_line_beat_the_papers(bare):
    suite = dataclasses.replace(bare, train={"epochs": 20, "batch_size": 64})
    train, sources = resolve_with_sources(parse_method_spec("cocoop"), suite, {"lr": 0.01}, shots=4)
    assert (train.epochs, train.batch_size, train.lr) == (20, 64, 0.01)
    assert (sources["epochs"], sources["batch_size"], sources["lr"]) == ("suite", "suite", "command line")


def test_one_recipe_for_all_drops_the_departures_not_its_own_schedule(bare):
    train, sources = resolve_with_sources(parse_method_spec("cocoop"), bare, {}, recipe="noah", shots=4)
    assert (train.optimizer, train.epochs, train.batch_size) == ("adamw", 100, 64)
    assert sources["epochs"] == "recipe noah"
    train, sources = resolve_with_sources(parse_method_spec("linear"), bare, {}, recipe="coop", shots=1)
    assert train.epochs == 50 and sources["epochs"] == "recipe coop at 1 shot"


def test_a_method_that_does_not_train_says_why_it_has_no_epochs(bare):
    train, sources = resolve_with_sources(parse_method_spec("zeroshot"), bare, {}, shots=4)
    assert train.epochs == 0 and sources["epochs"] == "method zeroshot (trains nothing)"


def test_the_clip_demo_trains_each_method_on_its_papers_schedule():
    """The CLIP demo's `train:` once set epochs 20 and batch 64 for every method, which hid CoCoOp's batch 1 and
    10 epochs and CAVPT's 60 epochs with 10 warm-up (both fell below zero-shot); it sets none of them now."""
    suite = load_suite("demo-clip")
    cocoop = resolve_train(parse_method_spec("cocoop"), suite, {}, shots=4)
    assert (cocoop.batch_size, cocoop.epochs) == (1, 10)
    cavpt = resolve_train(parse_method_spec("cavpt"), suite, {}, shots=4)
    # DPT's train_single.sh over its VPT config
    assert (cavpt.lr, cavpt.epochs, cavpt.warmup_epochs, cavpt.batch_size) == (0.01, 60, 10, 32)
    coop, sources = resolve_with_sources(parse_method_spec("coop"), suite, {}, shots=4)
    assert coop.epochs == 100 and sources["epochs"] == "recipe coop at 4 shots"
    assert sources["eval_batch_size"] == "suite"
