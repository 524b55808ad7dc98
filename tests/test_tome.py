"""ToMe on a real (random-init) Hugging Face CLIP: r = 0 is the stock model, sizes are conserved,
proportional attention with unit sizes is a no-op, the matching merges the most similar tokens, and
`keep` maps onto r at matched FLOPs."""

import itertools

import pytest
import torch
from conftest import ROOT, model_config
from omegaconf import OmegaConf

from vlm_eff.errors import ConfigError
from vlm_eff.flops import flops_per_image
from vlm_eff.models import ImageEncoder, random_model
from vlm_eff.reduction import apply_config, build, remove_all
from vlm_eff.reduction.dropping import apply_patch, remove_patch
from vlm_eff.reduction.merging import (
    apply_tome,
    bipartite_soft_matching,
    merges_for_tokens,
    r_for_keep,
    r_schedule,
    remove_tome,
    tome_tokens_per_layer,
)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def clip(request):
    torch.manual_seed(0)
    return random_model(model_config("clip_tiny", request.param)).eval()


def pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def features(clip, x):
    return ImageEncoder(clip)(x)


def attention_lengths(clip, x) -> list[int]:
    """Tokens entering each encoder layer."""
    seen, handles = [], [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
                         for layer in clip.vision_model.encoder.layers]
    try:
        features(clip, x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_r_zero_is_the_stock_model_and_remove_restores_it(clip):
    x = pixels()
    stock = features(clip, x)
    apply_tome(clip, 0)
    assert torch.equal(features(clip, x), stock)
    apply_tome(clip, 8)
    assert not torch.allclose(features(clip, x), stock, atol=1e-4)
    remove_tome(clip)
    assert torch.equal(features(clip, x), stock)


@pytest.mark.parametrize("r", [4, 20])
def test_sizes_sum_to_the_original_token_count(clip, r):
    x = pixels()
    state = apply_tome(clip, r)
    try:
        lengths = attention_lengths(clip, x)
    finally:
        remove_tome(clip)
    assert lengths == tome_tokens_per_layer([r] * 4, 65)
    assert state.size.shape == (3, lengths[-1] - min(r, (lengths[-1] - 1) // 2), 1)
    assert torch.equal(state.size.sum(dim=1).flatten(), torch.full((3,), 65.0))  # every image keeps 65 tokens' mass
    assert state.size.min() >= 1


def test_proportional_attention_with_unit_sizes_is_a_no_op(clip):
    """log(1) = 0: a layer given all-ones sizes (an additive zero mask) equals the layer given none."""
    x = pixels()
    with torch.no_grad():
        hidden = clip.vision_model.pre_layrnorm(clip.vision_model.embeddings(x))  # [3, 65, 64]
    state = apply_tome(clip, 4)
    layer = clip.vision_model.encoder.layers[0]
    try:
        with torch.no_grad():
            state.size = torch.ones(3, 65, 1)
            with_sizes = layer(hidden, None)
            state.size = None
            without = layer(hidden, None)
    finally:
        remove_tome(clip)
    assert with_sizes.shape == (3, 61, 64)
    torch.testing.assert_close(with_sizes, without, atol=1e-6, rtol=0)


def test_matching_merges_the_most_similar_pair_and_never_cls():
    """ToMe splits tokens by position into A (even: CLS, t2, t4) and B (odd: t1, t3). t2 and t3 are
    near twins, so r = 1 merges t2 into t3 (mean); output = unmerged A (CLS first), then B."""
    metric = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.1, 1.0], [0.7, 0.7, 0.0]]])
    x = torch.arange(5.0).view(1, 5, 1) * 10  # t0..t4 = 0, 10, 20, 30, 40
    merged = bipartite_soft_matching(metric, r=1)(x, mode="mean")
    assert merged.flatten().tolist() == [0.0, 40.0, 10.0, 25.0]
    assert bipartite_soft_matching(metric, r=0)(x) is x


def test_keep_maps_to_r_at_matched_flops(clip):
    assert r_for_keep(0.5, 197, 12, 768, 3072) == 16  # ViT-B/16: ToMe's own r = 16 operating point
    assert r_for_keep(1.0, 197, 12, 768, 3072) == 0
    x = pixels(1)
    encoder = ImageEncoder(clip)
    apply_patch(clip, keep=0.5, layer=0)
    pruned = flops_per_image(encoder, x)
    remove_patch(clip)
    apply_config(clip, OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml"))  # keep 0.5
    merged = flops_per_image(encoder, x)
    remove_all(clip)
    assert merged == pytest.approx(pruned, rel=0.05)


def check_pruning(cfg, n_layers: int) -> None:
    """Validate `cfg` for a ViT-B/16-shaped tower of `n_layers` layers."""
    build(cfg, {"num_hidden_layers": n_layers, "image_size": 224, "patch_size": 16, "hidden_size": 768,
                "intermediate_size": 3072}, has_cls=True)


def test_bad_tome_knobs_are_one_line_errors():
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml")
    cfg.r = -2
    with pytest.raises(ConfigError, match=r"^pruning.r=-2 must be an integer >= 0 \(tokens merged per layer\) or a list"):
        check_pruning(cfg, 12)
    cfg.r = [4, 4]
    with pytest.raises(ConfigError, match=r"^pruning.r=\[4, 4\] has 2 entries; a 12-layer encoder needs 12$"):
        check_pruning(cfg, 12)
    cfg.r, cfg.schedule = None, "cosine"
    with pytest.raises(ConfigError, match=r"^pruning.schedule='cosine' is unknown; allowed: constant, decreasing, increasing$"):
        check_pruning(cfg, 12)
    cfg.r, cfg.schedule = [1, 2, 3, 4], "decreasing"
    with pytest.raises(ConfigError, match=r"^pruning.r=\[1, 2, 3, 4\] is already a schedule"):
        check_pruning(cfg, 4)
    cfg.schedule = "constant"
    cfg.r, cfg.keep = None, 0
    with pytest.raises(ConfigError, match=r"^pruning.keep=0 is outside \(0, 1\]"):
        check_pruning(cfg, 12)


def test_r_follows_the_input_resolution(clip):
    """At 64 px (256 patches) keep 0.5 needs more merges per layer than at the native 32 px."""
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml")
    native = apply_config(clip, cfg).r
    larger = apply_config(clip, cfg, image_size=64).r
    remove_all(clip)
    assert native == (r_for_keep(0.5, 65, 4, 64, 128),) * 4
    assert larger == (r_for_keep(0.5, 257, 4, 64, 128),) * 4 and larger > native


def test_schedules_follow_tomes_parse_r():
    """ToMe's parse_r: decreasing runs 2r -> 0, increasing 0 -> 2r, linearly (truncated), a list is
    taken as given; the total stays about r per layer."""
    assert r_schedule(8, 4) == (8, 8, 8, 8)
    assert r_schedule(8, 5, "decreasing") == (16, 12, 8, 4, 0)
    assert r_schedule(8, 5, "increasing") == (0, 4, 8, 12, 16)
    assert r_schedule(3, 4, "decreasing") == (6, 4, 2, 0)
    assert r_schedule([5, 0, 2, 1], 4) == (5, 0, 2, 1)


def test_a_schedule_merges_its_per_layer_counts_at_matched_flops(clip):
    """Every layer merges its own count (tokens seen per layer follow the schedule), and keep 0.5
    under the decreasing schedule costs what keep 0.5 costs under the constant r (within 5 %).
    (`increasing` cannot match on a 4-layer, 65-token encoder: its first layer merges nothing.)"""
    x, schedule = pixels(), "decreasing"
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml")
    encoder = ImageEncoder(clip)
    constant = apply_config(clip, cfg)
    constant_flops = flops_per_image(encoder, x[:1])
    cfg.schedule = schedule
    state = apply_config(clip, cfg)
    try:
        lengths = attention_lengths(clip, x)
        scheduled_flops = flops_per_image(encoder, x[:1])
    finally:
        remove_all(clip)
    assert state.r == r_schedule(r_for_keep(0.5, 65, 4, 64, 128, schedule), 4, schedule) != constant.r
    assert lengths == tome_tokens_per_layer(state.r, 65)
    assert len({a - b for a, b in itertools.pairwise(lengths)}) > 1  # layers really merge different counts
    assert state.label == f"tome_r{r_for_keep(0.5, 65, 4, 64, 128, schedule)}_{schedule}"
    assert scheduled_flops == pytest.approx(constant_flops, rel=0.05)


def test_r_as_a_list_merges_exactly_those_counts(clip):
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml")
    cfg.r = [10, 0, 5, 1]
    state = apply_config(clip, cfg)
    try:
        lengths = attention_lengths(clip, pixels())
    finally:
        remove_all(clip)
    assert lengths == [65, 55, 55, 50] and state.label == "tome_r10-0-5-1" and state.keep is None


def test_layers_that_merge_nothing_still_attend_in_proportion_to_size(clip):
    """After a merge, sizes are uneven: a later layer with r = 0 must still add log(size) to its
    attention logits (ToMe applies proportional attention in every block)."""
    x = pixels()
    outputs = {}
    for prop_attn in (True, False):
        apply_tome(clip, [8, 0, 0, 0], prop_attn=prop_attn)
        outputs[prop_attn] = features(clip, x)
        remove_tome(clip)
    assert not torch.allclose(outputs[True], outputs[False], atol=1e-5)


@pytest.mark.parametrize("n_patches, kept, n_layers, has_cls", [
    (256, 32, 5, True), (256, 32, 5, False), (256, 64, 5, True), (256, 128, 5, True), (64, 32, 4, True),
    (256, 8, 5, False)])
def test_merges_for_tokens_reaches_any_budget_halving_allows(n_patches, kept, n_layers, has_cls):
    """A keep budget is met whenever halving every layer could meet it (12.5 % of 256 tokens in the 5 layers
    of the small VLMs' towers: spreading the merges evenly would stop at 38), as evenly as the later layers
    allow, and never more than half of a layer's tokens."""
    counts = merges_for_tokens(n_patches, kept, n_layers, has_cls)
    assert len(counts) == n_layers and sum(counts) == n_patches - kept
    tokens = n_patches + has_cls
    for r in counts:
        assert 0 <= r <= (tokens - has_cls) // 2
        tokens -= r
    if kept * 2 >= n_patches:  # a mild budget: the even spread, earlier layers first
        assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    with pytest.raises(ConfigError, match=f"can keep at least {n_patches >> n_layers} of {n_patches} tokens"):
        merges_for_tokens(n_patches, (n_patches >> n_layers) - 1, n_layers, has_cls)

