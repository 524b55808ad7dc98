"""PiToMe on real (random-init) Hugging Face towers of both families: r = 0 is the stock model, merged
sizes sum to N, the protected (low-energy) tokens pass through untouched, an isolated token survives
while near-duplicates merge, and `keep` maps onto the same r as ToMe."""

import pytest
import torch
from conftest import ROOT, model_config
from omegaconf import OmegaConf

from vlm_eff.errors import ConfigError
from vlm_eff.models import ImageEncoder, random_model
from vlm_eff.reduction import apply_config, build, remove_all
from vlm_eff.reduction.merging import apply_pitome, apply_tome, default_margins, energy_matching, tome_tokens_per_layer

N_PATCHES, LAYERS = 64, 4


@pytest.fixture(scope="module", params=["clip_tiny", "siglip_tiny"])
def model(request):
    torch.manual_seed(0)
    return random_model(model_config(request.param)).eval()


@pytest.fixture(autouse=True)
def unpatched(model):
    yield
    remove_all(model)


def pixels(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def embed(model, x) -> torch.Tensor:
    with torch.no_grad():
        return ImageEncoder(model)(x)  # [B, D]


def pitome_cfg(**overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "pruning" / "pitome.yaml")
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def has_cls(model) -> bool:
    return model.config.model_type == "clip"


def test_keep_one_is_the_stock_model_and_remove_restores_it(model):
    x = pixels()
    stock = embed(model, x)
    strategy = apply_config(model, pitome_cfg(keep=1.0))
    assert strategy.r == (0,) * LAYERS
    assert torch.equal(embed(model, x), stock)
    apply_pitome(model, 8)
    pitome = embed(model, x)
    assert not torch.allclose(pitome, stock, atol=1e-4)
    apply_tome(model, 8)
    assert not torch.allclose(pitome, embed(model, x), atol=1e-4)  # its own matching, not ToMe's
    remove_all(model)
    assert torch.equal(embed(model, x), stock)


@pytest.mark.parametrize("r", [5, 40])
def test_sizes_sum_to_n_and_token_counts_follow_the_formula(model, r):
    n_tokens = N_PATCHES + has_cls(model)
    state = apply_pitome(model, r)
    lengths = []
    handles = [layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
               for layer in model.vision_model.encoder.layers]
    try:
        embed(model, pixels())
    finally:
        for handle in handles:
            handle.remove()
    assert lengths == tome_tokens_per_layer([r] * LAYERS, n_tokens, has_cls(model))
    assert torch.equal(state.size.sum(dim=1).flatten(), torch.full((3,), float(n_tokens)))
    if has_cls(model):
        assert state.size[:, 0].flatten().tolist() == [1.0] * 3  # CLS is never merged


def plain_energy(metric: torch.Tensor, margin: float) -> torch.Tensor:
    """The paper's energy, written out: mean over k of f(cos(j, k)), f(c) = c - m above the margin,
    exp(c - m) - 1 below it (alpha = 1)."""
    unit = metric / metric.norm(dim=-1, keepdim=True)  # [B, T, C]
    cos = torch.einsum("btc,bsc->bts", unit, unit)  # [B, T, T]
    shifted = cos - margin
    return torch.where(shifted >= 0, shifted, shifted.exp() - 1).mean(dim=-1)  # [B, T]


@pytest.mark.parametrize("protect_first", [True, False])
def test_protected_tokens_pass_through_untouched(protect_first):
    """The T - first - 2r lowest-energy tokens come out exactly as they went in (CLS first)."""
    generator = torch.Generator().manual_seed(0)
    metric, x = torch.randn(2, 21, 8, generator=generator), torch.randn(2, 21, 5, generator=generator)
    r, margin, first = 6, 0.3, int(protect_first)
    merged = energy_matching(metric, r, margin, protect_first=protect_first)(x)  # [2, 15, 5]
    assert merged.shape == (2, 21 - r, 5)
    energy = plain_energy(metric[:, first:], margin)  # [2, T - first]
    for b in range(2):
        protected = energy[b].argsort(descending=True)[2 * r:] + first
        assert torch.equal(merged[b, first: first + len(protected)], x[b, protected])
        if protect_first:
            assert torch.equal(merged[b, 0], x[b, 0])


def test_an_isolated_token_survives_and_near_duplicates_merge():
    """Tokens: CLS, four near-copies of u, three of v, and w orthogonal to both. With r = 3 the six
    most redundant tokens (u and v copies) are matched, each source merging into a copy of its own
    vector; w, the isolated one, is kept as it is."""
    u, v, w = torch.eye(3)
    noise = torch.randn(7, 3, generator=torch.Generator().manual_seed(0)) * 0.01
    patches = torch.cat([torch.stack([u, u, u, u, v, v, v]) + noise, w[None]])  # [8, 3]
    metric = torch.cat([torch.tensor([[0.6, 0.6, 0.5]]), patches])[None]  # [1, 9, 3], CLS first
    x = (2.0 ** torch.arange(9)).view(1, 9, 1)  # token i = 2^i, so a merged sum names its members
    merged = energy_matching(metric, r=3, margin=0.5)(x, mode="sum").flatten().int().tolist()
    members = [{i for i in range(9) if value >> i & 1} for value in merged]
    u_ids, v_ids = {1, 2, 3, 4}, {5, 6, 7}
    assert len(merged) == 6 and members[0] == {0}  # CLS untouched
    assert {8} in members  # w survives alone
    groups = [m for m in members if len(m) > 1]  # (two sources may pick the same target)
    assert groups and all(m <= u_ids or m <= v_ids for m in groups)  # duplicates merged only with their own kind
    assert sum(map(len, members)) == 9 and set().union(*members) == set(range(9))  # each token counted once


def test_keep_maps_to_the_same_r_as_tome(model):
    vision = model.vision_model.config
    tome = build(OmegaConf.load(ROOT / "conf" / "pruning" / "tome.yaml"), vision, has_cls(model))
    pitome = build(pitome_cfg(), vision, has_cls(model))
    assert pitome.r == tome.r and pitome.r[0] > 0
    assert pitome.columns() == {"keep": 0.5, "layer": "all", "score": f"pitome_r{pitome.r[0]}"}
    assert pitome.margin == default_margins(LAYERS) == pytest.approx((0.9, 0.675, 0.45, 0.225))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"margin": 1.5}, "pruning.margin=1.5 must be a cosine in [-1, 1)"),
    ({"margin": False}, "pruning.margin=False must be a cosine in [-1, 1)"),
    ({"margin": [0.5, 0.4]}, "pruning.margin=[0.5, 0.4] must be a cosine in [-1, 1) or a list of 4"),
    ({"alpha": 0}, "pruning.alpha=0 must be a number > 0"),
    ({"keep": 0}, "pruning.keep=0 is outside (0, 1]"),
])
def test_bad_pitome_knobs_are_one_line_errors(model, overrides, message):
    with pytest.raises(ConfigError) as error:
        build(pitome_cfg(**overrides), model.vision_model.config, has_cls(model))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_constant_margin_is_in_the_label(model):
    strategy = build(pitome_cfg(margin=0.5, r=4), model.vision_model.config, has_cls(model))
    assert strategy.margin == (0.5,) * LAYERS and strategy.columns()["score"] == "pitome_r4_margin0.5"
    without = build(pitome_cfg(r=4, prop_attn=False), model.vision_model.config, has_cls(model))
    assert without.columns()["score"] == "pitome_r4_noprop"
    per_layer = build(pitome_cfg(r=4, margin=[0.5, 0.3, 0.5, 0.3], alpha=2), model.vision_model.config, has_cls(model))
    assert per_layer.columns()["score"] == "pitome_r4_margin0.5-0.3-0.5-0.3_alpha2"
