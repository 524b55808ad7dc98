"""The 2025 baselines against independent implementations written here from the authors' code (random: DESIGN.md's
seeded draw; VisPruner: Theia-4869/VisPruner's encode_images; DART: ZichenWen1/DART's LlamaModel.forward and
get_retained_image_token): batch size 1, eager attention weights, the stock modules called one by one; ours runs
at batch 3 with prompts of different lengths, SDPA and a KV cache. The tokens the language model receives (or keeps
from layer K on) must be identical and the first token's logits equal; keeping every token is the stock generation."""

import sys

import pytest
import torch
import torch.nn.functional as F
from test_vlm_sites import PREFIXES, causal, lm_logits, unpadded
from vlm_requests import LAYOUTS, requests, run_capturing, stock_generate, strategy

from vlm_eff.errors import ConfigError
from vlm_eff.generation import Runner
from vlm_eff.reduction.vispruner import vispruner_keep
from vlm_eff.vlms import layout_of


def received(model, rows, seen, b: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Row b's prompt as the LLM got it (embeddings, positions) and where its visual tokens start."""
    embeds, positions = unpadded(seen, b)
    return embeds, positions, int((rows[b] == model.config.image_token_id).nonzero()[0, 0])


# -- random ----------------------------------------------------------------------------------------------------
def reference_random(counts: list[int], n: list[int], seed: int) -> list[torch.Tensor]:
    """DESIGN.md's random: one generator seeded `seed` for the batch, each image's uniform draw of n of its tokens
    in turn (a permutation's first n), ascending."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(count, generator=generator)[:k].sort().values for count, k in zip(counts, n)]


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_random_matches_the_seeded_draw(tiny_vlms, name, batch):
    model = tiny_vlms[name]
    rows, images = requests(model, PREFIXES[batch])
    with torch.no_grad():
        stock = Runner(model).visual(images)
    applied = strategy(model, "random", keep=0.4, seed=7)
    out, seen = run_capturing(model, applied, rows, images)
    counts = [len(image.slots) for image in stock]
    kept = reference_random(counts, [max(1, round(0.4 * c)) for c in counts], seed=7)
    for b, (image, index) in enumerate(zip(stock, kept)):
        assert out.visual_tokens[b] == len(index)
        embeds, positions, start = received(model, rows, seen, b)
        torch.testing.assert_close(embeds[start: start + len(index)], image.embeds[index], rtol=0, atol=0)
        torch.testing.assert_close(out.first_logits[b], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)
    again, _ = run_capturing(model, strategy(model, "random", keep=0.4, seed=7), rows, images)
    other, _ = run_capturing(model, strategy(model, "random", keep=0.4, seed=8), rows, images)
    assert torch.equal(again.first_logits, out.first_logits)  # the same seed, the same draw
    assert not torch.equal(other.first_logits, out.first_logits)


# -- VisPruner -------------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_vispruner(tower, pixel_values, depth: int, budget: int, ratio: float, has_cls: bool) -> torch.Tensor:
    """VisPruner as the authors' encode_images: eager attentions and hidden states of the feature layer; importance =
    CLS's attention to the patches, head mean (no CLS: attention received, query mean, head mean); T_imp = int(T r)
    by importance; then rounds of r' = min(8, R - T_div): even residual tokens scored by their best cosine to an odd
    one, the r' best dropped, residual = the rest of the even (score order) then the odd; kept sorted."""
    implementation, tower.config._attn_implementation = tower.config._attn_implementation, "eager"
    try:
        out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        tower.config._attn_implementation = implementation
    attention, hidden = out.attentions[depth - 1], out.hidden_states[depth]
    if has_cls:
        features, scores = hidden[:, 1:], attention[:, :, 0, 1:].mean(dim=1)
    else:
        features, scores = hidden, attention.mean(dim=2).mean(dim=1)
    B = features.shape[0]
    important_n = int(budget * ratio)
    diverse_n = budget - important_n
    order = scores.argsort(dim=-1, descending=True)
    important, residual = order[:, :important_n], order[:, important_n:]
    normalized = features.double() / features.double().norm(dim=-1, keepdim=True)
    while diverse_n > 0:
        R = residual.shape[1]
        r = min(8, R - diverse_n)
        if r <= 0:
            break
        tokens = normalized[torch.arange(B)[:, None].expand(-1, R), residual]
        a, b = tokens[..., ::2, :], tokens[..., 1::2, :]
        distinct = (a @ b.transpose(-1, -2)).max(dim=-1).values.argsort(dim=-1, descending=True)[:, r:]
        residual = torch.cat([residual[..., ::2][torch.arange(B)[:, None].expand(-1, distinct.shape[1]), distinct],
                              residual[..., 1::2]], dim=-1)
    selected = torch.cat([important, residual], dim=-1) if diverse_n > 0 else important
    return selected.sort(dim=-1).values


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("tokens, ratio", [(16, 0.5), (40, 0.25), (20, 1.0)])
def test_vispruner_matches_the_authors_algorithm_on_llava(tiny_vlms, tokens, ratio, batch):
    model = tiny_vlms["llava_tiny"]
    rows, images = requests(model, PREFIXES[batch])
    tower = model.model.vision_tower
    kept = reference_vispruner(tower, images["pixel_values"], 3, tokens, ratio, True)  # [B, tokens] patch indices
    with torch.no_grad():
        stock = Runner(model).visual(images)  # every patch token, projected
    applied = strategy(model, "vispruner", tokens=tokens, important_ratio=ratio)
    out, seen = run_capturing(model, applied, rows, images)
    assert out.visual_tokens == [tokens] * len(rows)
    for b in range(len(rows)):
        embeds, positions, start = received(model, rows, seen, b)
        torch.testing.assert_close(embeds[start: start + tokens], stock[b].embeds[kept[b]], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.first_logits[b], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_vispruner_without_cls_keeps_the_authors_tokens_of_each_onevision_crop(tiny_vlms):
    model = tiny_vlms["onevision_tiny"]
    layout = layout_of(model)
    _, images = requests(model, (4, 4, 4))
    crops = images["pixel_values"][0, :2]
    expected = reference_vispruner(model.model.vision_tower, crops, 4, 24, 0.5, False)
    applied = strategy(model, "vispruner", tokens=24)
    try:
        _, origin = layout.tower_tokens(model, crops, applied, applied.hands_over)
    finally:
        applied.remove_from_vlm(model, layout)
    assert torch.equal(origin, expected)


def test_vispruner_duplicate_removal_order_on_a_hand_built_case():
    """Six tokens, two pairs of duplicates: importance keeps token 0; the residual [1, 2, 3, 4, 5] (importance
    order) is split even [1, 3, 5] / odd [2, 4]; 1 duplicates 2 and 3 duplicates 4, 5 is alone: one round drops
    the even tokens most similar to an odd one first (1 before 3: cosine 1.0 vs 0.995), the new residual the kept
    even ones, then the odd ones."""
    features = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.1], [0, 0, 1, 0], [0, 0, 0, 1]]])
    importance = torch.tensor([[6.0, 5, 4, 3, 2, 1]])
    assert vispruner_keep(features, importance, 5, 0.2).tolist() == [[0, 2, 3, 4, 5]]  # 1 dropped
    assert vispruner_keep(features, importance, 4, 0.25).tolist() == [[0, 2, 4, 5]]  # 1 and 3 dropped
    assert vispruner_keep(features, importance, 2, 1.0).tolist() == [[0, 1]]  # all by importance


# -- DART ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def reference_dart(model, embeds, positions, image, K: int, n: int):
    """DART as the authors' LlamaModel.forward: one prompt (no padding) through the decoder layers one by one; before
    layer K, layer K-1's keys (its k_proj of its input norm, rotated at the positions, heads concatenated), their L1
    norms; 4 image pivots (largest) and 4 text pivots (largest among the tokens after the image span); layer K-1's
    output after the final norm; per pivot in that order the candidates of lowest cosine, (n - 4) // 8 each and one
    more for the first (n - 4) % 8; the kept prompt sorted; later layers on it at the original positions.
    -> (kept prompt indices, last-token logits)."""
    layout = layout_of(model)
    lm = layout.language_model(model)
    h, pos = embeds[None], positions[:, None] if layout.mrope else positions
    index, previous, previous_pos = torch.arange(h.shape[1]), None, None
    span = image.nonzero()[:, 0]
    start, length = int(span[0]), len(span)
    for i, layer in enumerate(lm.layers):
        if i == K and n < length:  # T >= N keeps every token
            attn = lm.layers[K - 1].self_attn
            T, d = previous.shape[1], attn.head_dim
            k = attn.k_proj(lm.layers[K - 1].input_layernorm(previous)).view(1, T, -1, d).transpose(1, 2)
            cos, sin = lm.rotary_emb(previous, previous_pos)
            _, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(k, k, cos, sin)
            any_states = k.permute(0, 2, 1, 3).reshape(1, T, -1)
            norms = torch.norm(any_states[0], p=1, dim=-1)
            image_pivots = (norms[start: start + length].topk(4).indices + start).tolist()
            text_pivots = (norms[start + length:].topk(4).indices + start + length).tolist()
            state = lm.norm(h)[0]
            valid = [j for j in range(start, start + length) if j not in image_pivots]
            kept, left = list(image_pivots), n - 4
            for p, pivot in enumerate(image_pivots + text_pivots):
                share = left // 8 + int(p < left % 8)
                if share:
                    similarity = -F.cosine_similarity(state[pivot][None], state[valid], dim=-1)
                    picks = [valid[t] for t in similarity.topk(share).indices.tolist()]
                    kept += picks
                    valid = [v for v in valid if v not in picks]
            keep = torch.cat([torch.arange(start), torch.tensor(kept), torch.arange(start + length, T)]).sort().values
            h, pos, index = h[:, keep], pos[..., keep], index[keep]
        previous, previous_pos = h, pos
        implementation, lm.config._attn_implementation = lm.config._attn_implementation, "eager"
        try:
            h = layer(h, attention_mask=causal(h.shape[1]), position_embeddings=lm.rotary_emb(h, pos),
                      position_ids=None)
        finally:
            lm.config._attn_implementation = implementation
    return index, layout.lm_head(model)(lm.norm(h)[0, -1])


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("tokens", [12, 21, 40])
@pytest.mark.parametrize("name", LAYOUTS)
def test_dart_matches_the_authors_algorithm(tiny_vlms, name, tokens, batch):
    """At batch 3 the rows are left-padded to different lengths: the keys must be rotated at each token's own
    unpadded position, or the norms (L1 is not invariant to rotation) and the pivots would change."""
    model = tiny_vlms[name]
    rows, images = requests(model, PREFIXES[batch])
    applied = strategy(model, "dart", tokens=tokens, layer=1)
    out, seen = run_capturing(model, applied, rows, images)
    for b, row in enumerate(rows):
        embeds, positions = unpadded(seen, b)
        image = row == model.config.image_token_id
        kept, logits = reference_dart(model, embeds, positions, image, 1, tokens)
        pad = seen["embeds"].shape[1] - embeds.shape[0]
        stage = applied.stages[1]
        assert torch.equal(stage.index[b][stage.valid[b]] - pad, kept), (b, stage.index[b], kept)
        torch.testing.assert_close(out.first_logits[b], logits, rtol=1e-4, atol=1e-4)


def test_dart_shares_the_budget_among_the_pivots_on_a_hand_built_case():
    """Ten image tokens on a line of angles, pivot 0 (largest key norm) and one text pivot: 5 kept = the image pivots
    (4), then the one pick of the first pivot: the image token farthest from it (the opposite direction)."""
    from vlm_eff.reduction.dart import dart_keep

    angles = torch.linspace(0, torch.pi, 10)
    states = torch.stack([angles.cos(), angles.sin()], dim=1)  # [10, 2]: token 9 opposite token 0
    states = torch.cat([states, torch.tensor([[0.0, 1.0]])])  # [11, 2]: a text token after the image
    norms = torch.tensor([9.0, 1, 2, 3, 8, 7, 6, 0.5, 0.4, 0.3, 5])  # image pivots 0, 4, 5, 6; text pivot 10
    image, text = torch.arange(10), torch.tensor([10])
    assert dart_keep(norms, states, image, text, 5).tolist() == [0, 4, 5, 6, 9]
    assert dart_keep(norms, states, image, text, 3).tolist() == [0, 4, 5]  # fewer than 4: the top pivots
    assert dart_keep(norms, states, image, text, 10).tolist() == list(range(10))  # every token: all kept


@pytest.mark.parametrize("name, preset, knobs", [
    ("llava_tiny", "vispruner", dict(keep=1.0)), ("onevision_tiny", "vispruner", dict(keep=1.0)),
    *[(name, "random", dict(keep=1.0)) for name in LAYOUTS],
    *[(name, "dart", dict(keep=1.0, layer=1)) for name in LAYOUTS],
    *[(name, "cdpruner", dict(keep=1.0, relevance="llm")) for name in LAYOUTS]])  # fmt: skip
def test_keeping_every_token_is_the_stock_generation(tiny_vlms, name, preset, knobs):
    model = tiny_vlms[name]
    rows, images = requests(model, (3, 9, 1))
    stock = stock_generate(model, rows, images, 5)
    instructions = asked(["a", "b", "c"], [[5], [6, 7], [8]])
    out, _ = run_capturing(model, strategy(model, preset, **knobs), rows, images, 5, instructions=instructions)
    assert torch.equal(out.tokens, stock)


@pytest.mark.parametrize("preset, knobs, says", [
    ("vispruner", dict(important_ratio=0.0), "pruning.important_ratio=0.0 is outside (0, 1]"),
    ("vispruner", dict(important_ratio=1.5), "pruning.important_ratio=1.5 is outside (0, 1]"),
    ("dart", dict(layer=2), "pruning.layer=2 is out of range for a 2-layer language model; allowed 1..1"),
    ("dart", dict(layer=0), "pruning.layer=0 is out of range"),
    ("random", dict(seed=1.5), "pruning.seed=1.5 must be an integer"),
])  # fmt: skip
def test_bad_knobs_are_one_line_errors(tiny_vlms, preset, knobs, says):
    with pytest.raises(ConfigError) as caught:
        strategy(tiny_vlms["llava_tiny"], preset, **knobs)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_qwen_takes_random_but_not_vispruner(tiny_vlms):
    model = tiny_vlms["qwen2_vl_tiny"]
    with pytest.raises(ConfigError) as caught:
        strategy(model, "vispruner")
    message = str(caught.value)
    assert "takes no encoder-site strategy" in message and "random" in message and "vispruner" not in \
        message.split("allowed here:")[1]
    strategy(model, "random").remove_from_vlm(model, layout_of(model))


# -- CDPruner --------------------------------------------------------------------------------------------------
def reference_greedy(kernel: torch.Tensor, n: int) -> list[int]:
    """The explicit greedy: each step the token whose addition gives the largest log-determinant of the kernel of the
    chosen set."""
    chosen: list[int] = []
    for _ in range(n):
        gains = [torch.logdet(kernel[[*chosen, j]][:, [*chosen, j]]) if j not in chosen else -torch.inf
                 for j in range(kernel.shape[0])]
        chosen.append(int(torch.stack([torch.as_tensor(g, dtype=kernel.dtype) for g in gains]).argmax()))
    return sorted(chosen)


@pytest.mark.parametrize("seed", range(4))
def test_cdpruner_greedy_is_the_explicit_log_determinant_greedy(seed):
    from vlm_eff.reduction.cdpruner import conditional_kernel, greedy_map

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(12, 6, generator=generator)  # rank 6: 5 picks never exhaust it
    relevance = torch.rand(12, generator=generator, dtype=torch.float64) + 0.1
    kernel = conditional_kernel(tokens, relevance)
    assert greedy_map(kernel, 5, relevance).tolist() == reference_greedy(kernel, 5)


def test_cdpruner_fills_an_exhausted_kernel_by_relevance():
    """Rank 2: after two picks no direction is left; the third is the most relevant token not chosen."""
    from vlm_eff.reduction.cdpruner import conditional_kernel, greedy_map

    tokens = torch.tensor([[1.0, 0], [0, 1], [1, 1], [1, -1], [2, 1]])
    relevance = torch.tensor([0.2, 0.3, 1.0, 0.9, 0.5], dtype=torch.float64)
    picked = greedy_map(conditional_kernel(tokens, relevance), 3, relevance).tolist()
    two = greedy_map(conditional_kernel(tokens, relevance), 2, relevance).tolist()
    assert len(picked) == 3 and set(two) <= set(picked)
    left = [k for k in (2, 3, 4, 1, 0) if k not in two]  # by relevance, descending
    assert set(picked) == set(two) | {left[0]}


@torch.no_grad()
def reference_cdpruner(features: torch.Tensor, relevance: torch.Tensor, n: int) -> torch.Tensor:
    """CDPruner's kernel and fast greedy MAP as the authors' encode_images (for one image; float64 as DESIGN.md):
    similarity of the normalised projected features, relevance min-max scaled, kernel, cis / di2s updates."""
    unit = features.double() / features.double().norm(dim=-1, keepdim=True)
    similarity = unit @ unit.T
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance[:, None] * similarity * relevance[None, :]
    N = kernel.shape[0]
    cis, di2s, chosen = torch.zeros(n, N, dtype=torch.float64), torch.diagonal(kernel).clone(), []
    for i in range(n):
        j = int(torch.argmax(di2s))
        chosen.append(j)
        eis = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(di2s[j])
        cis[i] = eis
        di2s -= torch.square(eis)
        di2s[j] = -float("inf")
    return torch.tensor(sorted(chosen))


def asked(texts: list[str], ids: list[list[int]]):
    from vlm_eff.generation import Instruction

    return [Instruction(t, torch.tensor(i)) for t, i in zip(texts, ids)]


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_cdpruner_with_the_language_models_relevance_matches_the_authors_algorithm(tiny_vlms, name, batch):
    model = tiny_vlms[name]
    rows, images = requests(model, PREFIXES[batch])
    instructions = asked(["what is it?", "is there a cat?", "how many?"][:len(rows)],
                         [[320, 1125, 2], [533, 1239, 40, 50, 60], [8]][:len(rows)])
    with torch.no_grad():
        stock = Runner(model).visual(images)
    applied = strategy(model, "cdpruner", tokens=6, relevance="llm")
    out, seen = run_capturing(model, applied, rows, images, instructions=instructions)
    embed = model.get_input_embeddings()
    for b, image in enumerate(stock):
        mean = embed(instructions[b].ids).double().mean(dim=0)
        relevance = -F.cosine_similarity(image.embeds.double(), mean[None], dim=-1)
        kept = reference_cdpruner(image.embeds, relevance, 6)
        embeds, positions, start = received(model, rows, seen, b)
        torch.testing.assert_close(embeds[start: start + 6], image.embeds[kept], rtol=0, atol=0)
        torch.testing.assert_close(out.first_logits[b], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def text_tower(tiny_vlms, tmp_path_factory):
    """A small CLIP dual encoder whose vision tower has llava_tiny's shape, saved with the CLIP BPE tokenizer."""
    from conftest import ROOT
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    vision = tiny_vlms["llava_tiny"].config.vision_config.to_dict()
    torch.manual_seed(1)
    config = CLIPConfig(vision_config=vision, projection_dim=16, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=49408,
        max_position_embeddings=16))  # short rows, so that an instruction is cut into several
    directory = tmp_path_factory.mktemp("text_tower")
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPTokenizerFast.from_pretrained(ROOT / "assets" / "clip-tokenizer").save_pretrained(directory)
    return directory


@pytest.mark.parametrize("batch", PREFIXES)
def test_cdpruner_with_the_text_tower_matches_the_authors_algorithm_on_llava(tiny_vlms, text_tower, batch):
    from transformers import CLIPModel, CLIPTokenizerFast

    model = tiny_vlms["llava_tiny"]
    rows, images = requests(model, PREFIXES[batch])
    texts = ["what is the object in the middle of this picture, and what colour is it?", "cat?", "how many dogs"]
    instructions = asked(texts[:len(rows)], [[1]] * len(rows))
    clip, tokenizer = CLIPModel.from_pretrained(text_tower).eval(), CLIPTokenizerFast.from_pretrained(text_tower)
    with torch.no_grad():
        stock = Runner(model).visual(images)
        out_features = model.model.vision_tower(images["pixel_values"], output_hidden_states=True).hidden_states[-2]
    applied = strategy(model, "cdpruner", tokens=10, text_tower=str(text_tower))
    out, seen = run_capturing(model, applied, rows, images, instructions=instructions)
    for b, image in enumerate(stock):
        with torch.no_grad():  # the authors' CLIPVisionTower.forward with texts, for one image
            image_embeds = clip.visual_projection(clip.vision_model.post_layernorm(out_features[b, 1:]))
            inputs = tokenizer(text=texts[b], return_tensors="pt")
            segments = (inputs.input_ids.shape[1] - 1) // 16 + 1
            padding = 16 * segments - inputs.input_ids.shape[1]
            inputs = {k: torch.cat([v, v.new_zeros((v.shape[0], padding))], dim=1).reshape(-1, 16)
                      for k, v in inputs.items()}
            text_embeds = clip.get_text_features(**inputs).pooler_output
        image_embeds = image_embeds.double() / image_embeds.double().norm(dim=-1, keepdim=True)
        text_embeds = text_embeds.double() / text_embeds.double().norm(dim=-1, keepdim=True)
        assert text_embeds.shape[0] == segments and (segments > 1 or b > 0)  # the first is cut into rows
        relevance = (-(image_embeds @ text_embeds.T)).mean(dim=-1)
        kept = reference_cdpruner(image.embeds, relevance, 10)
        embeds, positions, start = received(model, rows, seen, b)
        torch.testing.assert_close(embeds[start: start + 10], image.embeds[kept], rtol=0, atol=0)
        torch.testing.assert_close(out.first_logits[b], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


def test_cdpruner_bad_input_names_the_fix(tiny_vlms):
    def message(name, **knobs) -> str:
        with pytest.raises(ConfigError) as caught:
            strategy(tiny_vlms[name], "cdpruner", **knobs)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert "pruning.text_tower=" in message("llava_tiny") and "pruning.relevance=llm" in message("llava_tiny")
    assert "use pruning.relevance=llm" in message("onevision_tiny", text_tower="x")
    assert "cdpruner with pruning.relevance=llm" in message("qwen2_vl_tiny")
    assert "pruning.relevance='sure' is unknown; allowed: tower, llm" in message("llava_tiny", relevance="sure")
    assert "pruning.text_tower=/nowhere: no dual encoder" in message("llava_tiny", text_tower="/nowhere")


# -- SparseVLM -------------------------------------------------------------------------------------------------
def reference_cluster_and_merge(x: torch.Tensor, cluster_num: int) -> torch.Tensor:
    """The authors' cluster_and_merge (DPC-KNN), for one batch row, without their 1e-6 tie-breaking noise."""
    x = x[None].float()
    B, N, C = x.shape
    dist_matrix = (x[:, :, None] - x[:, None, :]).norm(dim=-1, p=2) / (C ** 0.5)
    dist_nearest, _ = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest ** 2).mean(dim=-1)).exp()
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, _ = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    _, index_down = torch.topk(dist * density, k=cluster_num, dim=-1)
    idx_cluster = dist_matrix[0][index_down[0]][None].argmin(dim=1)
    idx_cluster[0, index_down[0]] = torch.arange(cluster_num)
    all_weight = torch.zeros(cluster_num, 1).index_add_(0, idx_cluster[0], torch.ones(N, 1)) + 1e-6
    merged = torch.zeros(cluster_num, C).index_add_(0, idx_cluster[0], x[0] / all_weight[idx_cluster[0]])
    return merged


@torch.no_grad()
def reference_sparsevlm(model, embeds, positions, image, ranking: list[int], budgets: list[int]):
    """SparseVLM v1.0 as the authors' LlamaDynamicvitModel.forward, one prompt, eager attention, layer by layer: the
    raters from the input embeddings; after each ranking layer, its head-mean attention from the raters to the image
    tokens (rater mean), the top min(budget, n - 1) kept; the pruned top int(0.3 n) + 1 by that score clustered and
    merged back after the kept ones; the next layers on [prefix, kept, merged, text]. Positions: each kept token's own,
    a merged token its centre's (DESIGN.md's llm-site rule, where the authors' v1.0 renumbers). -> last-token logits."""
    layout = layout_of(model)
    lm = layout.language_model(model)
    h, pos = embeds[None], positions[:, None] if layout.mrope else positions
    span = image.nonzero()[:, 0]
    start, n_image = int(span[0]), len(span)
    v_t, t_t = h[:, start: start + n_image], h[:, start + n_image:]
    m_v_t = (v_t @ t_t.transpose(1, 2)).softmax(2).mean(1)[0]
    raters = torch.where(m_v_t > m_v_t.mean())[0] + start + n_image
    implementation, lm.config._attn_implementation = lm.config._attn_implementation, "eager"
    try:
        for i, layer in enumerate(lm.layers):
            rope = lm.rotary_emb(h, pos)
            if i in ranking:
                _, weights = layer.self_attn(hidden_states=layer.input_layernorm(h), attention_mask=causal(h.shape[1]),
                                             position_embeddings=rope)
            h = layer(h, attention_mask=causal(h.shape[1]), position_embeddings=rope, position_ids=None)
            if i in ranking:
                relation = weights.mean(1)[0][raters][:, start: start + n_image].mean(0)  # [n]
                keep_n = min(budgets[ranking.index(i)], n_image - 1)
                kept = relation.topk(keep_n).indices.sort().values
                pruned = torch.tensor([j for j in range(n_image) if j not in kept.tolist()])
                recycled = pruned[relation[pruned].topk(int(len(pruned) * 0.3) + 1).indices]
                cluster_num = int(len(recycled) / 10) + 1
                merged = reference_cluster_and_merge(h[0, start + recycled], cluster_num)
                x = h[0, start + recycled][None].float()  # the centres, as the authors pick them, for the positions
                d = (x[:, :, None] - x[:, None, :]).norm(dim=-1) / (x.shape[-1] ** 0.5)
                density = (-(torch.topk(d, k=cluster_num, dim=-1, largest=False).values ** 2).mean(-1)).exp()
                mask = (density[:, None, :] > density[:, :, None]).float()
                parent = (d * mask + d.max() * (1 - mask)).min(dim=-1).values
                centres = recycled[torch.topk(parent * density, k=cluster_num, dim=-1).indices[0]]
                text = torch.arange(start + n_image, h.shape[1])
                h = torch.cat([h[:, :start], h[:, start + kept], merged[None].to(h.dtype), h[:, text]], dim=1)
                pos = torch.cat([pos[..., :start], pos[..., start + kept], pos[..., start + centres], pos[..., text]],
                                dim=-1)
                raters = raters - n_image + len(kept) + cluster_num
                n_image = len(kept) + cluster_num
    finally:
        lm.config._attn_implementation = implementation
    return layout.lm_head(model)(lm.norm(h)[0, -1])


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("tokens", [64, 192])
@pytest.mark.parametrize("name", LAYOUTS)
def test_sparsevlm_matches_the_authors_algorithm(tiny_vlms, name, tokens, batch):
    from vlm_eff.reduction.sparsevlm import AUTHORS_TOKENS, BUDGETS

    model = tiny_vlms[name]
    rows, images = requests(model, PREFIXES[batch])
    applied = strategy(model, "sparsevlm", tokens=tokens, layer=[0])
    out, seen = run_capturing(model, applied, rows, images)
    for b, row in enumerate(rows):
        embeds, positions = unpadded(seen, b)
        image = row == model.config.image_token_id
        budget = max(1, round(BUDGETS[tokens][0] * int(image.sum()) / AUTHORS_TOKENS))
        logits = reference_sparsevlm(model, embeds, positions, image, [0], [budget])
        torch.testing.assert_close(out.first_logits[b], logits, rtol=1e-4, atol=1e-4)
        stage = applied.stages[1]
        kept = min(budget, int(image.sum()) - 1)
        recycled = int((int(image.sum()) - kept) * 0.3) + 1
        assert int((stage.image & stage.valid)[b].sum()) == kept + int(recycled / 10) + 1


@pytest.mark.parametrize("seed", range(3))
def test_sparsevlm_clustering_is_the_authors(seed):
    """DPC-KNN on random tokens (no ties): the same clusters and means as the authors' code, each token in one."""
    from vlm_eff.reduction.sparsevlm import cluster_and_merge

    x = torch.randn(23, 8, generator=torch.Generator().manual_seed(seed))
    merged, centres = cluster_and_merge(x, 3)
    torch.testing.assert_close(merged, reference_cluster_and_merge(x, 3))
    assert len(set(centres.tolist())) == 3


def test_sparsevlm_layers_scale_to_the_depth_and_bad_budgets_are_one_line_errors(tiny_vlms):
    from vlm_eff.reduction.sparsevlm import scaled_layers

    assert scaled_layers(32) == (2, 6, 15) and scaled_layers(24) == (2, 4, 11) and scaled_layers(4) == (1, 2)
    for knobs, says in [(dict(tokens=50), "pruning.tokens=50 has no SparseVLM budgets; allowed: 64, 96, 128, 192"),
                        (dict(layer=[1]), "must be distinct ascending decoder layers in 0..0"),
                        (dict(keep=0.5, tokens=None), "takes pruning.tokens")]:
        with pytest.raises(ConfigError) as caught:
            strategy(tiny_vlms["llava_tiny"], "sparsevlm", **knobs)
        assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_boundary_choice_runs_without_autograd_and_the_kept_tokens_keep_their_gradient():
    """Under recovery training the projected tokens carry a gradient: the strategy chooses without building a graph
    (CDPruner's greedy loop, under autograd, grew the training process by 40 MB a step, 6 GB in 200), and the loss
    reaches exactly the kept tokens."""
    from omegaconf import OmegaConf

    from vlm_eff.reduction.boundary import DivPrune
    from vlm_eff.vlms import ImageTokens

    seen = []

    class Recording(DivPrune):
        def pick(self, embeds, n, b):
            seen.append(torch.is_grad_enabled())
            return super().pick(embeds, n, b)

    embeds = torch.randn(16, 8, requires_grad=True)  # [N, D]
    (kept,) = Recording.from_config(OmegaConf.create({"tokens": 4}), None, None).after_projector(
        [ImageTokens(embeds, torch.arange(16), 16)])
    kept.embeds.sum().backward()
    assert seen == [False] and kept.embeds.requires_grad
    assert embeds.grad.abs().sum(dim=1).nonzero().flatten().tolist() == kept.slots.tolist()
