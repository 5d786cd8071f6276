"""CoMo (methods/como.py): the logit combination in closed form, the DINO weight at 0, the search as the official
one (first best, beta-major), the second tower (its input normalisation, its size, its frozen weights, nothing fetched
at planning) and the CLIP tower's pre-logits with a side tower beside it."""
from __future__ import annotations

import math

import pytest
import torch

from petlbench.backbone import BackboneSpec
from petlbench.clip import create
from petlbench.errors import UserError
from petlbench.methods.como import (SideTower, cache_logits, combine, ensemble_weights, fuse, search, side_tower,
                                    standardise)

# a tiny timm ViT standing in for DINO: the DINO ViT-S/16 entry (its ImageNet mean/std), random weights, sized for
# the tiny CLIP's 32x32 images
DINO = "vit_small_patch16_224.dino"
TINY_DINO = ["img_size=32", "patch_size=8", "embed_dim=24", "depth=1", "num_heads=2"]


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
