"""Token reduction on a real (random-init) Hugging Face CLIP: exactness at keep=1.0, token counts,
CLS and positional bookkeeping, summary tokens, scores, seeding, patch removal and knob errors.

clip_tiny: 32x32 images, 4x4 patches -> N = 64 patch tokens (+ CLS = 65), 4 vision layers, 4 heads,
width 64, projection 32.
"""

import copy
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vlm_eff.models import random_model
from vlm_eff.reduction.dropping import apply_patch, current_reduction, kept_count, remove_patch, tokens_per_layer

ROOT = Path(__file__).resolve().parents[1]
N_PATCHES, N_LAYERS, WIDTH, PROJ = 64, 4, 64, 32
ATTNS = ("sdpa", "eager")

# The presets' knobs, fixed by design (keep is set per test).
PRESETS = {
    "naive": dict(layer=-1, score="l2", keep_cls=False, summary="mean"),
    "position_aware": dict(layer=0, score="l2", keep_cls=False, summary="mean"),
    "cls_preserving": dict(layer=0, score="l2", keep_cls=True, summary="none"),
    "late_layer": dict(layer=None, score="l2", keep_cls=True, summary="none"),  # None = L // 2
}


def build(attn_implementation: str):
    cfg = OmegaConf.load(ROOT / "conf" / "model" / "clip_tiny.yaml")
    cfg.attn_implementation = attn_implementation
    torch.manual_seed(0)
    return random_model(cfg).eval()


@pytest.fixture(scope="module")
def clips():
    """One model per attention implementation, with identical weights."""
    models = {attn: build(attn) for attn in ATTNS}
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    return models


@pytest.fixture(scope="module")
def sharp_clips(clips):
    """Copies with query and key weights x4: at random init CLS attention is near uniform (~1/65 everywhere,
    ties at 1e-5), x4 spreads it (0.0003 .. 0.12), so comparing and ranking attention scores means something."""
    models = {attn: copy.deepcopy(model) for attn, model in clips.items()}
    with torch.no_grad():
        for model in models.values():
            for layer in model.vision_model.encoder.layers:
                layer.self_attn.q_proj.weight.mul_(4)
                layer.self_attn.k_proj.weight.mul_(4)
    return models


@pytest.fixture(autouse=True)
def unpatch_after(clips, sharp_clips):
    """Every test leaves the shared models stock."""
    yield
    for model in [*clips.values(), *sharp_clips.values()]:
        remove_patch(model)


@pytest.fixture(params=ATTNS)
def clip(request, clips):
    """The shared model under each attention implementation."""
    return clips[request.param]


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def features(model, x: torch.Tensor) -> torch.Tensor:
    return model.get_image_features(pixel_values=x).pooler_output  # [B, PROJ]


@torch.no_grad()
def run_capturing(model, x: torch.Tensor):
    """Features, the pre_layrnorm input [B, T, D] and the sequence length entering each encoder layer."""
    tower = model.vision_model
    seen, lengths = {}, []
    handles = [tower.pre_layrnorm.register_forward_pre_hook(lambda m, args: seen.update(pre=args[0].clone()))]
    handles += [
        layer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
        for layer in tower.encoder.layers
    ]
    try:
        out = features(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen["pre"], lengths


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores per row, ascending: [B, N] -> [B, k]."""
    return torch.argsort(scores, dim=1, descending=True)[:, :k].sort(dim=1).values


def forward_hooks(model) -> set:
    """(module name, hook id) of every forward hook in the vision tower (transformers adds its own
    output-capturing hooks the first time attentions or hidden states are requested)."""
    return {(name, key) for name, module in model.vision_model.named_modules() for key in module._forward_hooks}


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, D], idx [B, k] -> [B, k, D]."""
    return torch.stack([t[i] for t, i in zip(tokens, idx)])


def test_preset_files_match_the_design():
    """conf/pruning/*.yaml carry exactly the designed knobs (late_layer: layer null = L // 2)."""
    for name, knobs in PRESETS.items():
        cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "pruning" / f"{name}.yaml"))
        assert {key: cfg[key] for key in knobs} == knobs, name
    assert OmegaConf.load(ROOT / "conf" / "pruning" / "none.yaml").keep == 1.0


@pytest.mark.parametrize("preset", ["none", "cls_preserving", "late_layer"])
def test_keep_one_reproduces_the_stock_model(clip, preset):
    """keep=1.0 with CLS kept and no summary is the stock forward (fp32, within 1e-5)."""
    x = pixels()
    stock = features(clip, x)
    if preset != "none":
        apply_patch(clip, keep=1.0, **PRESETS[preset])
    out, _, lengths = run_capturing(clip, x)
    assert lengths == [1 + N_PATCHES] * N_LAYERS
    assert (out - stock).abs().max() <= 1e-5


def test_evit_preset_is_the_stock_model_at_keep_one_and_fuses_below(clip):
    """evit = pool_attn scores (CLS's attention row on CLIP), CLS kept, dropped tokens fused into one, at layers 3/6/9 (10+ layer
    encoders; this 4-layer model reduces after layers 1, 2, 3). At keep 1.0 nothing is dropped and no
    fused token is added: the stock forward. At keep 0.7 each step keeps 70 % of the patches, plus
    CLS and one fused token."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "pruning" / "evit.yaml"))
    assert cfg | {"keep": None} == {"name": "evit", "keep": None, "layer": [3, 6, 9], "score": "pool_attn",
                                   "keep_cls": True, "summary": "fused", "mass": None, "positions": "compact"}
    knobs = dict(layer=[1, 2, 3], score=cfg["score"], keep_cls=True, summary=cfg["summary"])
    x = pixels()
    stock = features(clip, x)
    apply_patch(clip, keep=1.0, **knobs)
    out, _, lengths = run_capturing(clip, x)
    assert lengths == [1 + N_PATCHES] * N_LAYERS and (out - stock).abs().max() <= 1e-5
    reduction = apply_patch(clip, keep=0.7, **knobs)
    _, _, lengths = run_capturing(clip, x)
    assert lengths == [65, 1 + 1 + 44, 1 + 1 + 30, 1 + 1 + 21] == tokens_per_layer(reduction, N_PATCHES, N_LAYERS)


@pytest.mark.parametrize("preset", ["naive", "position_aware"])
def test_keep_one_without_cls_differs_from_the_stock_model(clip, preset):
    """naive and position_aware are not the identity at keep=1.0: they drop CLS and pool a mean summary
    token at index 0 instead (naive also drops the patches' positional embeddings), so the pooled
    embedding is a different vector."""
    x = pixels()
    stock = features(clip, x)
    apply_patch(clip, keep=1.0, **PRESETS[preset])
    out, _, lengths = run_capturing(clip, x)
    assert lengths == [1 + N_PATCHES] * N_LAYERS  # summary + 64 patches: same length, different content
    assert ((out - stock).norm(dim=1) > 0.25 * stock.norm(dim=1)).all()  # vs 1e-5 for the identity presets


# (knobs, tokens entering layers 0..3, computed by hand from k = max(1, floor(keep * N + 1e-6)))
COUNT_CASES = [
    # CLS + 64 -> CLS + 32 -> CLS + 16 -> CLS + 8
    (dict(keep=0.5, layer=[1, 2, 3], keep_cls=True, summary="none"), [65, 33, 17, 9]),
    # naive: mean + floor(32) from the raw patches
    (dict(keep=0.5, layer=-1, keep_cls=False, summary="mean"), [33, 33, 33, 33]),
    # CLS + fused + 16
    (dict(keep=0.25, layer=0, keep_cls=True, summary="fused"), [18, 18, 18, 18]),
    # mean + floor(19.2) = 19; after layer 2: mean + floor(0.3 * 19 = 5.7) = 5
    (dict(keep=0.3, layer=[0, 2], keep_cls=False, summary="mean"), [20, 20, 6, 6]),
    # layer None = 4 // 2 = 2: CLS + fused + floor(0.29 * 64 = 18.56) = 18
    (dict(keep=0.29, layer=None, keep_cls=True, summary="fused"), [65, 65, 20, 20]),
    # nothing dropped: no fused token appears
    (dict(keep=1.0, layer=1, keep_cls=True, summary="fused"), [65, 65, 65, 65]),
    # layer -1: CLS + fused + 48; after layer 3: CLS + fused + floor(0.75 * 48) = 36
    (dict(keep=0.75, layer=[-1, 3], keep_cls=True, summary="fused"), [50, 50, 50, 38]),
    # cls_attn after layers 1 and 3: mean + 32, then mean + 16
    (dict(keep=0.5, layer=[1, 3], score="cls_attn", keep_cls=False, summary="mean"), [65, 33, 33, 17]),
    # random: CLS + floor(6.4) = 6
    (dict(keep=0.1, layer=0, score="random", keep_cls=True, summary="none"), [7, 7, 7, 7]),
    # k never drops below 1: CLS + 1 at every step
    (dict(keep=0.001, layer=[0, 1, 2, 3], keep_cls=True, summary="none"), [2, 2, 2, 2]),
]


@pytest.mark.parametrize("knobs, expected", COUNT_CASES)
def test_tokens_entering_each_layer(clip, knobs, expected):
    """Measured sequence lengths at every encoder layer equal tokens_per_layer and the hand count."""
    reduction = apply_patch(clip, **knobs)
    _, _, lengths = run_capturing(clip, pixels())
    assert lengths == tokens_per_layer(reduction, N_PATCHES, N_LAYERS) == expected
    assert tokens_per_layer(None, N_PATCHES, N_LAYERS) == [1 + N_PATCHES] * N_LAYERS


def test_kept_count_absorbs_float_error():
    """k = max(1, floor(keep * N)) computed on the intended decimal, never below 1."""
    assert 0.29 * 100 < 29 and 0.57 * 100 < 57  # the float products fall just short
    assert kept_count(100, 0.29) == 29
    assert kept_count(100, 0.57) == 57
    assert kept_count(64, 0.5) == 32
    assert kept_count(64, 0.29) == 18  # 18.56
    assert kept_count(64, 1.0) == 64
    assert kept_count(64, 1e-9) == 1
    assert kept_count(1, 0.5) == 1


@pytest.mark.parametrize("layer", [0, -1])
def test_cls_stays_at_index_zero(clip, layer):
    """cls_preserving keep=0.5, after the embeddings (0) or on the raw patches (-1): token 0 entering
    pre_layrnorm is exactly the stock CLS embedding (class embedding + position 0)."""
    x = pixels()
    with torch.no_grad():
        stock = clip.vision_model.embeddings(x)  # [B, 65, D]
    apply_patch(clip, keep=0.5, **{**PRESETS["cls_preserving"], "layer": layer})
    _, pre, _ = run_capturing(clip, x)
    assert pre.shape == (2, 1 + 32, WIDTH)
    assert torch.equal(pre[:, 0], stock[:, 0])


@pytest.mark.parametrize("preset", ["position_aware", "cls_preserving"])
def test_kept_tokens_carry_their_own_positional_embedding(clips, preset):
    """With zero patch embeddings each patch token is exactly its position row; the rows' norms are set so
    the top-k by L2 is known: the kept tokens are those rows, in ascending spatial order."""
    model = copy.deepcopy(clips["eager"])
    emb = model.vision_model.embeddings
    generator = torch.Generator().manual_seed(2)
    rank = torch.randperm(N_PATCHES, generator=generator)  # patch rank[j] gets norm 1 + j
    with torch.no_grad():
        emb.patch_embedding.weight.zero_()
        rows = torch.randn(N_PATCHES, WIDTH, generator=generator)
        rows = rows / rows.norm(dim=1, keepdim=True)  # unit rows [N, D]
        norms = torch.empty(N_PATCHES)
        norms[rank] = 1.0 + torch.arange(N_PATCHES, dtype=torch.float32)
        emb.position_embedding.weight[1:] = rows * norms[:, None]
    k = kept_count(N_PATCHES, 0.25)  # 16
    expected_idx = rank[-k:].sort().values  # the k largest norms, spatial order
    apply_patch(model, keep=0.25, **PRESETS[preset])
    _, pre, _ = run_capturing(model, pixels())
    assert pre.shape == (2, 1 + k, WIDTH)  # [CLS or mean summary] + k kept
    for sample in pre:
        assert torch.equal(sample[1:], emb.position_embedding.weight[1 + expected_idx])


def test_naive_summary_is_the_mean_of_raw_patches_and_kept_tokens_lack_positions(clip):
    """naive keep=0.5: token 0 is the mean of all raw patch embeddings (no positions); the kept tokens are
    the raw patch embeddings with the largest L2 norm, in spatial order."""
    x = pixels()
    with torch.no_grad():
        raw = clip.vision_model.embeddings.patch_embedding(x)  # [B, D, 8, 8]
    raw = raw.flatten(2).transpose(1, 2)  # [B, 64, D]
    apply_patch(clip, keep=0.5, **PRESETS["naive"])
    _, pre, _ = run_capturing(clip, x)
    torch.testing.assert_close(pre[:, 0], raw.mean(dim=1), atol=1e-6, rtol=0)
    kept = gather_tokens(raw, top_k_sorted(raw.norm(dim=-1), 32))  # [B, 32, D]
    assert torch.equal(pre[:, 1:], kept)


def test_fused_summary_is_the_norm_weighted_mean_of_dropped_tokens(clip):
    """summary=fused, score=l2 at layer 0: [CLS, sum_j |p_j| p_j / sum_j |p_j| over dropped j, kept...]."""
    x = pixels()
    with torch.no_grad():
        stock = clip.vision_model.embeddings(x)  # [B, 65, D]
    patches = stock[:, 1:]  # [B, 64, D]
    norms = patches.norm(dim=-1)  # [B, 64]
    kept_idx = top_k_sorted(norms, 32)
    dropped = torch.ones_like(norms, dtype=torch.bool)
    for row, idx in zip(dropped, kept_idx):
        row[idx] = False
    weights = norms * dropped  # [B, 64]
    fused = (weights[..., None] * patches).sum(dim=1) / weights.sum(dim=1, keepdim=True)  # [B, D]
    apply_patch(clip, keep=0.5, layer=0, score="l2", keep_cls=True, summary="fused")
    _, pre, _ = run_capturing(clip, x)
    assert pre.shape == (2, 1 + 1 + 32, WIDTH)
    assert torch.equal(pre[:, 0], stock[:, 0])
    torch.testing.assert_close(pre[:, 1], fused, atol=1e-6, rtol=1e-5)
    assert torch.equal(pre[:, 2:], gather_tokens(patches, kept_idx))


@torch.no_grad()
def reference_cls_attention(eager_model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Head-averaged CLS-row attention probabilities of stock eager layer `layer - 1`: [B, 65]."""
    attentions = eager_model.vision_model(pixel_values=x, output_attentions=True).attentions
    return attentions[layer - 1][:, :, 0, :].mean(dim=1)  # [B, H, 65, 65] -> [B, 65]


@pytest.mark.parametrize("layer", [1, 3])
def test_cls_attn_scores_are_the_eager_cls_row(sharp_clips, layer):
    """score=cls_attn after `layer` layers sees exactly the stock eager CLS-row attention (head mean)."""
    model = sharp_clips["eager"]
    x = pixels()
    reference = reference_cls_attention(model, x, layer)
    apply_patch(model, keep=0.5, layer=layer, score="cls_attn", keep_cls=True, summary="none")
    reducer = model.vision_model.embeddings._reducer
    original, seen = reducer.scores, []
    reducer.scores = lambda tokens: seen.append(original(tokens)) or seen[-1]
    features(model, x)
    assert len(seen) == 1 and seen[0].shape == (2, 1 + N_PATCHES)
    torch.testing.assert_close(seen[0], reference, atol=1e-5, rtol=0)  # CLS column included


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("layer", [1, 3])
def test_cls_attn_keeps_the_reference_top_k_under_any_attention(sharp_clips, attn, layer):
    """Under SDPA as under eager, the tokens entering layer `layer` are CLS + the stock hidden states of the
    top-32 patches by the eager reference CLS attention, in spatial order."""
    model, x = sharp_clips[attn], pixels()
    patch_attention = reference_cls_attention(sharp_clips["eager"], x, layer)[:, 1:]  # [B, 64]
    ranked = patch_attention.sort(dim=1, descending=True).values
    assert (ranked[:, 31] - ranked[:, 32]).min() > 1e-5  # no near-tie at the cut: the top-k is well defined
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[layer]  # [B, 65, D]
    expected = torch.cat([hidden[:, :1], gather_tokens(hidden[:, 1:], top_k_sorted(patch_attention, 32))], dim=1)
    apply_patch(model, keep=0.5, layer=layer, score="cls_attn", keep_cls=True, summary="none")
    seen = {}
    handle = model.vision_model.encoder.layers[layer].register_forward_pre_hook(
        lambda m, args: seen.update(tokens=args[0].clone())
    )
    try:
        features(model, x)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["tokens"], expected, atol=1e-5, rtol=0)


def test_random_score_is_reproducible_under_a_seed(clip):
    """score=random: the same seed gives the same output, another seed a different one."""
    x = pixels()
    knobs = dict(keep=0.5, layer=0, score="random", keep_cls=True, summary="none")
    outputs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        apply_patch(clip, seed=seed, **knobs)
        outputs[name] = features(clip, x)
    assert torch.equal(outputs["a"], outputs["b"])
    assert not torch.allclose(outputs["a"], outputs["c"], atol=1e-4)


def test_remove_patch_restores_the_stock_model(clip):
    """remove_patch: stock classes, no hooks, no reduction, bit-identical output; a no-op when unpatched."""
    x = pixels()
    stock = features(clip, x)
    tower, hooks = clip.vision_model, forward_hooks(clip)
    apply_patch(clip, keep=0.5, layer=[1, 2], score="cls_attn", keep_cls=True, summary="fused")
    assert type(tower.embeddings).__name__ != "CLIPVisionEmbeddings"
    assert len(forward_hooks(clip) - hooks) == 4  # q_proj and k_proj of layers 0 and 1
    assert not torch.equal(features(clip, x), stock)
    remove_patch(clip)
    remove_patch(clip)
    assert current_reduction(clip) is None
    assert type(tower.embeddings).__name__ == "CLIPVisionEmbeddings"
    assert {type(layer).__name__ for layer in tower.encoder.layers} == {"CLIPEncoderLayer"}
    assert forward_hooks(clip) == hooks
    assert not any("_reducer" in m.__dict__ for m in tower.modules())
    assert torch.equal(features(clip, x), stock)


def test_reapplying_replaces_the_earlier_patch(clip):
    """A second apply_patch replaces the first: its reduction only, no stacked classes or hooks."""
    x, hooks = pixels(), forward_hooks(clip)
    apply_patch(clip, keep=0.5, layer=[1, 2], score="cls_attn", keep_cls=True, summary="none")
    second = apply_patch(clip, keep=0.25, layer=0, score="l2", keep_cls=True, summary="none")
    tower = clip.vision_model
    assert current_reduction(clip) == second
    assert [base.__name__ for base in type(tower.embeddings).__mro__].count("CLIPVisionEmbeddings") == 1
    assert type(tower.embeddings).__bases__[1].__name__ == "CLIPVisionEmbeddings"  # one wrapper, not two
    assert {type(layer).__name__ for layer in tower.encoder.layers} == {"CLIPEncoderLayer"}
    assert forward_hooks(clip) == hooks  # the first patch's q/k capture hooks are gone
    out, _, lengths = run_capturing(clip, x)
    assert lengths == tokens_per_layer(second, N_PATCHES, N_LAYERS) == [17] * N_LAYERS
    remove_patch(clip)
    apply_patch(clip, keep=0.25, layer=0, score="l2", keep_cls=True, summary="none")
    assert torch.equal(out, features(clip, x))  # same as applying the second patch alone


ERROR_CASES = [
    (dict(keep=0), ["keep=0 ", "(0, 1]"]),
    (dict(keep=1.5), ["keep=1.5", "(0, 1]"]),
    (dict(keep=-0.1), ["keep=-0.1", "(0, 1]"]),
    (dict(keep=True), ["keep=True", "(0, 1]"]),
    (dict(keep=0.5, layer=4), ["layer=4", "-1..3"]),
    (dict(keep=0.5, layer=-2), ["layer=-2", "-1..3"]),
    (dict(keep=0.5, layer=[1, 4]), ["layer=4", "-1..3"]),
    (dict(keep=0.5, layer=0, score="cls_attn"), ["cls_attn", "layer >= 1"]),
    (dict(keep=0.5, score="foo"), ["'foo'", "l2, cls_attn, pool_attn, random"]),
    (dict(keep=0.5, summary="bar"), ["'bar'", "none, mean, fused"]),
    (dict(keep=0.5, keep_cls=False, summary="none"), ["keep_cls", "summary=none", "summary=mean"]),
    (dict(keep=1.0, keep_cls=False, summary="fused"), ["keep_cls", "summary=fused", "summary=mean"]),
]


@pytest.mark.parametrize("knobs, fragments", ERROR_CASES)
def test_bad_knobs_raise_one_line_errors(clips, knobs, fragments):
    """Each invalid knob is a ValueError with a one-line message naming the value and what is allowed."""
    model = clips["sdpa"]
    with pytest.raises(ValueError, match=re.escape(fragments[0])) as error:
        apply_patch(model, **knobs)
    message = str(error.value)
    assert "\n" not in message
    assert all(fragment in message for fragment in fragments), message
    assert current_reduction(model) is None


BATCH_CONFIGS = [
    *[dict(keep=0.5, **knobs) for knobs in PRESETS.values()],
    dict(keep=0.3, layer=[1, 3], score="cls_attn", keep_cls=True, summary="fused"),
    dict(keep=0.4, layer=[-1, 2], score="l2", keep_cls=True, summary="fused"),
]


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("knobs", BATCH_CONFIGS)
def test_batch_sizes_one_and_three(sharp_clips, attn, knobs):
    """Outputs are finite for B = 1 and B = 3, and each image's output does not depend on its batch mates
    (sharp models: no near-tied attention scores whose ranking could flip with the batch size)."""
    model, x = sharp_clips[attn], pixels(batch=3)
    apply_patch(model, **knobs)
    batched = features(model, x)
    assert batched.shape == (3, PROJ) and torch.isfinite(batched).all()
    for i in range(3):
        single = features(model, x[i : i + 1])
        assert single.shape == (1, PROJ) and torch.isfinite(single).all()
        torch.testing.assert_close(single[0], batched[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("knobs", [dict(layer=0, score="l2", mass=0.6), dict(layer=2, score="cls_attn", mass=0.7)])
def test_adaptive_keep_budgets_meet_the_mass_and_padding_never_changes_a_result(sharp_clips, attn, knobs):
    """mass: each image keeps the fewest top-scoring patches holding that share of its score mass
    (at most the keep count); the batch is padded to the largest budget and the padding is masked,
    so every image's output equals its output in a batch of one."""
    model = sharp_clips[attn]
    x = pixels(6) * torch.linspace(0.2, 3.0, 6).view(6, 1, 1, 1)  # images of different contrast
    apply_patch(model, keep=0.9, **knobs)
    reducer = model.vision_model.embeddings._reducer
    original, seen = reducer.scores, []
    reducer.scores = lambda tokens: seen.append(original(tokens)) or seen[-1]
    batch = features(model, x)
    budgets = reducer.budgets.tolist()
    singles = torch.cat([features(model, x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    share = seen[0][:, 1:].float()
    share = (share / share.sum(dim=1, keepdim=True)).sort(dim=1, descending=True).values  # [6, 64]
    for i, budget in enumerate(budgets):
        assert budget <= kept_count(N_PATCHES, 0.9)
        assert share[i, :budget].sum() >= knobs["mass"] - 1e-6 or budget == kept_count(N_PATCHES, 0.9)
        assert share[i, : budget - 1].sum() < knobs["mass"]  # and no smaller budget would do
    assert len(set(budgets)) > 1  # budgets really differ per image


@pytest.mark.parametrize(
    "knobs, message",
    [
        (dict(mass=0.0), r"pruning.mass=0.0 is outside \(0, 1\]"),
        (dict(mass=1.5), r"pruning.mass=1.5 is outside \(0, 1\]"),
        (dict(mass=0.9, layer=[1, 2]), r"pruning.mass \(adaptive keep\) needs one pruning.layer"),
        (dict(mass=0.9, summary="fused"), r"needs one pruning.layer, keep_cls=true and summary=none"),
    ],
)
def test_bad_adaptive_knobs_are_one_line_errors(clip, knobs, message):
    with pytest.raises(ValueError, match=message):
        apply_patch(clip, **{"keep": 0.5, "layer": 1, **knobs})
