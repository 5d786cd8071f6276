"""CoMo (methods/como.py): the logit combination in closed form, the DINO weight at 0 (Tip-Adapter on the same
cache), the search as the official one (first best, beta-major) reading val and never test, the second tower (its
input normalisation, its size, its frozen weights, nothing fetched at planning), the CLIP tower's pre-logits with a
side tower beside it, and real runs through the CLI on the tiny CLIP with a tiny random timm ViT as DINO."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from petlbench.backbone import BackboneSpec
from petlbench.clip import create
from petlbench.data.cache import resolve_cache_dir
from petlbench.engine.closedform import ClosedForm
from petlbench.engine.execute import execute
from petlbench.engine.features import RunCache
from petlbench.errors import UserError
from petlbench.methods.como import cache_logits, combine, ensemble_weights, fuse, search, standardise
from petlbench.params import build_model
from petlbench.sidetower import SideTower, feature_identity, side_tower
from tests.conftest import petlbench_cli
from tests.test_clip import COUNTS, NAMES, TEMPLATES, tiny_clip  # noqa: F401 (a fixture)
from tests.test_method_tip_adapter import plan_for, pooled

# a tiny timm ViT standing in for DINO: the DINO ViT-S/16 entry (its ImageNet mean/std), random weights, sized for
# the tiny CLIP's 32x32 images
DINO = "vit_small_patch16_224.dino"
TINY_DINO = ["img_size=32", "patch_size=8", "embed_dim=24", "depth=1", "num_heads=2"]
OPTIONS = f"dino={DINO}:dino_pretrained=false:dino_args={'+'.join(TINY_DINO)}"


def test_combination_in_closed_form():
    zero_shot = torch.tensor([[1.0, 2.0, 3.0]])  # standardised: [-1, 0, 1] (unbiased std 1)
    clip_cache = torch.tensor([[3.0, 2.0, 1.0]])  # standardised: [1, 0, -1]; agreement with zero-shot: -2
    dino_cache = torch.tensor([[0.0, 0.0, 3.0]])  # standardised: [-1, -1, 2] / sqrt(3); agreement: sqrt(3)
    z_clip, z_dino = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([-1.0, -1.0, 2.0]) / math.sqrt(3)
    w_clip = math.exp(-2) / (math.exp(-2) + math.exp(math.sqrt(3)))
    expected = zero_shot + 0.7 * (w_clip * z_clip + (1 - w_clip) * z_dino)
    assert torch.allclose(standardise(dino_cache), z_dino.unsqueeze(0))
    assert torch.allclose(ensemble_weights(zero_shot, [clip_cache, dino_cache]),
                          torch.tensor([[w_clip, 1 - w_clip]]))
    assert torch.allclose(combine(zero_shot, [clip_cache, dino_cache], 0.7), expected, atol=1e-6)


def test_scale_of_each_input_does_not_matter_and_rows_are_independent():
    """Standardising makes the blend blind to each input's scale and shift (CLIP's logit scale 100 or the model's)."""
    torch.manual_seed(0)
    zs, a, b = torch.randn(5, 7), torch.rand(5, 7), torch.rand(5, 7)
    base = fuse(zs, [a, b])
    assert torch.allclose(fuse(100 * zs + 3, [4 * a, b - 1]), base, atol=1e-5)
    assert torch.allclose(fuse(zs[2:3], [a[2:3], b[2:3]]), base[2:3], atol=1e-6)


def test_dino_weight_zero_leaves_the_clip_cache_standardised():
    torch.manual_seed(1)
    zs, clip_cache, dino_cache = torch.randn(6, 4), torch.rand(6, 4), torch.rand(6, 4)
    fixed = combine(zs, [clip_cache, dino_cache], 1.3, weights=torch.tensor([1.0, 0.0]))
    assert torch.allclose(fixed, zs + 1.3 * standardise(clip_cache))
    assert torch.allclose(combine(zs, [clip_cache], 1.3), fixed)  # one cache: its weight is 1
    assert torch.equal(combine(zs, [clip_cache, dino_cache], 0.0), zs)  # alpha 0: zero-shot CLIP


def test_search_takes_the_first_best_in_beta_major_order():
    """Every (beta, alpha) gives the same accuracy here: the first pair is kept, as `search_ensemble_hp` does."""
    zs = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    affinity = torch.eye(2)
    values = torch.eye(2)
    beta, alpha, acc = search(zs, [affinity, affinity], values, torch.tensor([0, 1]), [0.1, 1.0], [0.1, 2.0])
    assert (beta, alpha, acc) == (0.1, 0.1, 1.0)
    # a cache that disagrees with zero-shot and an alpha large enough to flip the answer: the search finds it
    beta, alpha, acc = search(zs, [1 - affinity, 1 - affinity], values, torch.tensor([1, 0]), [0.1, 1.0], [0.1, 50.0])
    assert (alpha, acc) == (50.0, 1.0) and beta == 0.1


def test_cache_read_out_is_tip_adapters():
    affinity, values = torch.tensor([[1.0, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(cache_logits(affinity, values, 2.0), torch.tensor([[1.0, math.exp(-1.0)]]))


@pytest.fixture(scope="module")
def clip_tower():
    torch.manual_seed(0)
    return create(BackboneSpec("clip:tiny", {}, pretrained=False), 3).eval()


def test_side_tower_sees_the_image_in_its_own_normalisation(clip_tower):
    tower = side_tower(DINO, TINY_DINO, None, False, True, clip_tower).eval()
    assert not any(p.requires_grad for p in tower.parameters())
    raw = torch.rand(2, 3, 32, 32)
    clip_mean, clip_std, own_mean, own_std = (torch.tensor(v).view(1, 3, 1, 1) for v in tower.renormalise)
    assert torch.allclose(clip_mean.flatten(), torch.tensor(clip_tower.pretrained_cfg["mean"]))
    assert torch.allclose(own_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))  # timm's ViT: ImageNet's
    with torch.no_grad():
        seen = tower((raw - clip_mean) / clip_std)
        expected = tower.model((raw - own_mean) / own_std)
    assert torch.allclose(seen, expected, atol=1e-5)
    same = side_tower(DINO, TINY_DINO, None, False, False, clip_tower)
    assert same.renormalise is None  # the official code's choice: DINO gets CLIP's normalised image as it is


def test_side_tower_resizes_to_its_own_input():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model.num_features = 2
    tower = SideTower(model, None, (16, 16))
    assert tower(torch.rand(1, 3, 32, 32)).shape == (1, 2)
    assert model[1].in_features == 3 * 16 * 16


def test_side_tower_at_planning_fetches_nothing(clip_tower):
    with torch.device("meta"):
        meta_clip = create(BackboneSpec("clip:tiny", {}, pretrained=False), 3)
        tower = side_tower("vit_base_patch16_224.dino", [], "/nowhere.safetensors", True, True, meta_clip)
    assert next(tower.parameters()).is_meta and tower.out_features == 768


def test_bad_side_tower_is_one_line(clip_tower, tmp_path):
    for name, args, checkpoint, needle in (
            ("vit_tiny_patch16_2244", [], None, "unknown to timm"),
            ("vit_tiny_patch16_224", ["depth"], None, "expected key=value"),
            (DINO, TINY_DINO, str(tmp_path / "missing.safetensors"), "missing.safetensors: no such file")):
        with pytest.raises(UserError) as err:
            side_tower(name, args, checkpoint, False, False, clip_tower)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_clip_pre_logits_carry_the_side_features(clip_tower):
    tower = side_tower(DINO, TINY_DINO, None, False, False, clip_tower).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        alone = clip_tower.forward_head(clip_tower.forward_features(images), pre_logits=True)
        clip_tower.side = tower
        try:
            joined = clip_tower.forward_head(clip_tower.forward_features(images), pre_logits=True)
        finally:
            del clip_tower.side
    assert joined.shape == (2, 48 + 24)
    assert torch.equal(joined[:, :48], alone)
    assert torch.allclose(joined[:, 48:], tower(images))


def built(path, spec_text, images=None, labels=None):
    """As the runner builds it; a closed-form method's cache from the head inputs of `images` (computed by the model
    itself: CLIP's pooled token, and CoMo's DINO features beside it)."""
    from petlbench.registry import parse_method_spec
    method = parse_method_spec(spec_text)
    fit = (lambda model: method.fit_closed_form(model, pooled(model, images), labels)) if images is not None else None
    return build_model(BackboneSpec("clip:tiny", {}, checkpoint=str(path)), method, 3, seed=0, classnames=NAMES,
                       templates=TEMPLATES, closed_form=fit).model.eval()


def test_dino_weight_zero_is_tip_adapter_on_the_same_cache(tiny_clip):
    """With the DINO cache's weight at 0, CoMo is Tip-Adapter with its cache term standardised per image (the
    blend's normalisation); at alpha 0 it is zero-shot CLIP exactly."""
    _, path = tiny_clip
    torch.manual_seed(1)
    train_x, train_y, x = torch.randn(9, 3, 32, 32), torch.arange(9) % 3, torch.randn(5, 3, 32, 32)
    tip = built(path, "tip_adapter:init_alpha=0.8:init_beta=2", train_x, train_y)
    como = built(path, f"como_free:{OPTIONS}:init_alpha=0.8:init_beta=2", train_x, train_y)
    assert torch.equal(como.head.keys.weight, tip.head.keys.weight) and torch.equal(como.head.values, tip.head.values)
    with torch.no_grad():
        f = tip.head.image_features(pooled(tip, x))
        tip_cache = tip.head.cache_logits(f, tip.head.beta)
        assert torch.allclose(tip(x), tip.head.zero_shot(f) + 0.8 * tip_cache)
        zero_shot, affinities = como.head.affinities(pooled(como, x))
        caches = [cache_logits(a, como.head.values, como.head.beta) for a in affinities]
        without_dino = combine(zero_shot, caches, como.head.alpha, weights=torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(without_dino, tip.head.zero_shot(f) + 0.8 * standardise(tip_cache),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(como(x), combine(zero_shot, caches, 0.8), rtol=0, atol=1e-6)
        assert not torch.allclose(como(x), without_dino), "the DINO cache counts"
        como.head.alpha.fill_(0.0)
        assert torch.equal(como(x), built(path, "zeroshot")(x))


def test_caches_hold_the_training_images_clip_and_dino_features(tiny_clip, tiny_tasks, tmp_path):
    reference, path = tiny_clip
    plan = plan_for(tmp_path, tiny_tasks, path, f"como_free:{OPTIONS}")
    cache = RunCache(None, features=False)
    train = cache.get(plan, plan.protocol["train_splits"], plan.preprocessing(), train=True)
    closed = ClosedForm(plan, train, cache, torch.device("cpu"))
    model, counts, _ = build_model(plan.backbone, plan.method, 6, 0, classnames=COUNTS, closed_form=closed.fit)
    images, labels = train.batch(torch.arange(len(train)))
    with torch.no_grad():
        clip_features = F.normalize(reference.encode_image(images), dim=-1)
        dino_features = F.normalize(model.side.model(images), dim=-1)  # the image as CLIP normalised it
    torch.testing.assert_close(model.head.keys.weight, clip_features, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.head.side_keys.weight, dino_features, rtol=0, atol=1e-6)
    assert torch.equal(model.head.values, F.one_hot(labels, 6).float())
    assert closed.record["cache_size"] == 64 and closed.record["dino_features"] == 24
    dino_params = sum(p.numel() for p in model.side.parameters())
    assert counts.trainable == 0 and counts.added == dino_params, "the frozen DINO tower is what the method adds"


def test_the_search_reads_val_and_never_test(tiny_clip, tiny_tasks, tmp_path):
    """The same task with the test split's labels rotated: the chosen alpha and beta cannot move."""
    _, path = tiny_clip
    shifted = tmp_path / "shifted"
    shutil.copytree(tiny_tasks, shifted)
    listing = shifted / "count" / "test.txt"
    rows = [line.rsplit(" ", 1) for line in listing.read_text().splitlines()]
    listing.write_text("".join(f"{rel} {(int(label) + 1) % 6}\n" for rel, label in rows))
    records = []
    for root in (tiny_tasks, shifted):
        plan = plan_for(tmp_path, root, path, f"como_free:{OPTIONS}")
        records.append(execute(plan, tmp_path / f"out-{root.name}", torch.device("cpu"),
                               RunCache(resolve_cache_dir(None)), False, lambda line: None, "test",
                               save_weights=False, save_samples=False))
    a, b = records
    assert a["status"] == b["status"] == "success", (a.get("error"), b.get("error"))
    assert a["data"]["eval_digest"] != b["data"]["eval_digest"], "the test splits differ"
    assert a["closed_form"] == b["closed_form"], "alpha, beta and the val score depend on train and val only"
    assert a["closed_form"]["val_splits"] == ["val200"] and a["closed_form"]["searched"]
    assert a["closed_form"]["cache_rows_held_out"] == 16, "val200's images sit in train800val200: left out"


def test_runs_through_the_cli(tiny_clip, tiny_tasks, tmp_path):
    """tip_adapter first fills the feature cache with CLIP's features alone; CoMo's entries (CLIP's and DINO's) are
    their own, so both read the right ones."""
    _, path = tiny_clip
    from tests.test_clip import suite_file
    out, cache = tmp_path / "results", tmp_path / "cache"  # a cache of its own: other tests' entries stay out
    proc = petlbench_cli("run", "--suite", str(suite_file(tmp_path / "s")), "--data-root", str(tiny_tasks),
                         "--out", str(out), "--methods", f"tip_adapter,como_free:{OPTIONS},como:{OPTIONS}",
                         "--backbone", "clip:tiny", "--checkpoint", str(path), "--train", "epochs=2", "--no-samples",
                         env={"PETLBENCH_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    records = [r for r in (json.loads(p.read_text()) for p in out.rglob("*.json")) if "method" in r]
    by = {r["method"]["name"]: r for r in records}
    assert set(by) == {"tip_adapter", "como_free", "como"}
    assert all(r["status"] == "success" for r in records), [r.get("error") for r in records]
    free, tuned = by["como_free"], by["como"]
    entries = [p for p in (cache / "features").glob("features-*") if p.is_dir()]
    assert len(entries) == 4, "val and train of CLIP's features (tip_adapter), of CLIP's + DINO's (both CoMo runs)"
    assert free["train"]["epochs"] == 0 and free["params"]["trainable"] == 0
    assert tuned["metrics"]["epochs"] == 2 and tuned["params"]["trainable_excl_head"] == 64 * 32 + 64 * 24
    assert (tuned["train"]["optimizer"], tuned["train"]["lr"], tuned["train"]["weight_decay"]) == ("adamw", 1e-3, 0.01)
    for r in (free, tuned):
        chosen = r["closed_form"]
        assert chosen["cache_size"] == 64 and chosen["searched"] and 0.1 <= chosen["alpha"] < 3
        assert r["method"]["options"]["dino"] == DINO and r["method"]["options"]["dino_input"] == "clip"
        assert 0 <= r["metrics"]["test_top1"] <= 1


def test_feature_cache_keys_tell_the_side_tower_apart(clip_tower):
    assert feature_identity(clip_tower) == {}
    clip_tower.side = side_tower(DINO, TINY_DINO, None, False, False, clip_tower)
    try:
        key = feature_identity(clip_tower)["side"]
        assert key["name"] == DINO and key["weights"] == "random-init" and key["renormalise"] is None
    finally:
        del clip_tower.side


def test_dino_weights_from_a_local_checkpoint(tiny_clip, tmp_path):
    """timm's state dict in a local file: loaded into the tower, its content part of the run's identity; a missing
    file is refused at planning's meta build, in one line."""
    from safetensors.torch import save_file
    from petlbench.params import meta_counts
    from petlbench.registry import parse_method_spec
    _, path = tiny_clip
    torch.manual_seed(3)
    reference = side_tower(DINO, TINY_DINO, None, False, False, create(BackboneSpec("clip:tiny", {}, pretrained=False), 3))
    weights = tmp_path / "dino.safetensors"
    head = {"head.weight": torch.randn(7, reference.model.num_features), "head.bias": torch.zeros(7)}
    # a checkpoint of a classifier (as the demo's pre-trained ViT): its head is dropped, as a backbone's is
    save_file({**{k: v.contiguous() for k, v in reference.model.state_dict().items()}, **head}, str(weights))
    spec = f"como_free:dino={DINO}:dino_args={'+'.join(TINY_DINO)}:dino_checkpoint={weights}"
    model = built(path, spec, torch.randn(6, 3, 32, 32), torch.arange(6) % 3)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(model.side.model.state_dict()[name], tensor), name
    method = parse_method_spec(spec)
    assert len(method.identity()["dino_checkpoint_sha256"]) == 64
    assert model.side.identity["weights"].startswith("checkpoint sha256:")
    missing = parse_method_spec(spec.replace(str(weights), str(tmp_path / "gone.safetensors")))
    with pytest.raises(UserError, match="gone.safetensors: no such file"):
        meta_counts(BackboneSpec("clip:tiny", {}, pretrained=False), missing)
