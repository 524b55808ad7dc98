"""The boundary and LLM-site strategies against independent implementations written here from the authors'
code (dvlab-research/VisionZip, the DivPrune paper's code, pkunlp-icler/FastV, Cooperx521/PyramidDrop):
batch size 1, no padding, eager attention weights, the stock modules called layer by layer; ours runs at
batch 3 with prompts of different lengths, SDPA and a KV cache. Kept indices must be identical and the
first token's logits equal; keep 1.0 must be the stock generation."""

import pytest
import torch
import torch.nn.functional as F
from vlm_requests import LAYOUTS, requests, run_capturing, stock_generate, strategy

from vlm_eff.generation import Runner
from vlm_eff.vlms import layout_of

PREFIXES = {"batch1": (4,), "batch3": (3, 9, 1)}


def unpadded(seen: dict, b: int):
    """Row b's prompt as the LLM got it, padding removed: embeddings [n, D], positions [P, n]."""
    real = seen["mask"][b].bool()
    positions = seen["positions"] if seen["positions"].dim() == 3 else seen["positions"][None]
    return seen["embeds"][b, real], positions[:, b, real]


@torch.no_grad()
def lm_logits(model, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The stock language model on one unpadded prompt [n, D] (positions [P, n]) -> last-token logits [V]."""
    layout = layout_of(model)
    lm = layout.language_model(model)
    out = lm(inputs_embeds=embeds[None], position_ids=positions[:, None] if layout.mrope else positions)
    return layout.lm_head(model)(out.last_hidden_state[0, -1])


# -- the LLM site: FastV and PyramidDrop, reference written from the authors' forward loops ------------------
def causal(T: int) -> torch.Tensor:
    return torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]  # [1, 1, T, T] additive


@torch.no_grad()
def reference_llm_site(model, embeds, positions, image, fastv: bool, keep: float, layers: list[int]):
    """One prompt (no padding) through the decoder layers one by one, eager attention: at each stage layer K,
    rank the image tokens by the last token's attention (head mean) in layer K-1 (FastV) or K (PyramidDrop),
    keep round(N * keep) (FastV) or int(N * keep^(s+1)) (PyramidDrop), ascending, original positions.
    -> (kept prompt indices after each stage, last-token logits)."""
    layout = layout_of(model)
    lm = layout.language_model(model)
    implementation, lm.config._attn_implementation = lm.config._attn_implementation, "eager"
    try:
        h, pos = embeds[None], positions[:, None] if layout.mrope else positions  # [1, T, D]
        index, n_image, kept, previous = torch.arange(h.shape[1]), int(image.sum()), [], None
        for i, layer in enumerate(lm.layers):
            if i in layers:
                stage = layers.index(i)
                ranker, ranked = (lm.layers[i - 1], previous) if fastv else (layer, h)
                rope = lm.rotary_emb(ranked, pos)
                _, weights = ranker.self_attn(hidden_states=ranker.input_layernorm(ranked),
                                              attention_mask=causal(ranked.shape[1]), position_embeddings=rope)
                score = weights.mean(dim=1)[0, -1]  # [T]: the last token's attention, head mean
                images = image.nonzero()[:, 0]
                n = round(n_image * keep) if fastv else int(n_image * keep ** (stage + 1))
                top = images[score[images].topk(n).indices]
                keep_index = torch.cat([(~image).nonzero()[:, 0], top]).sort().values
                h, index, image = h[:, keep_index], index[keep_index], image[keep_index]
                pos = pos[..., keep_index]
                kept.append(index)
            previous = h
            h = layer(h, attention_mask=causal(h.shape[1]), position_embeddings=lm.rotary_emb(h, pos), position_ids=None)
        logits = layout.lm_head(model)(lm.norm(h)[0, -1])
    finally:
        lm.config._attn_implementation = implementation
    return kept, logits


LLM_CASES = [("fastv", dict(keep=0.5, layer=1)), ("fastv", dict(keep=0.3, layer=1)),
             ("pyramiddrop", dict(keep=0.5, layer=[0, 1])), ("pyramiddrop", dict(keep=0.7, layer=[1]))]


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("preset,knobs", LLM_CASES, ids=[f"{p}-{k['keep']}" for p, k in LLM_CASES])
@pytest.mark.parametrize("name", LAYOUTS)
def test_llm_site_matches_the_authors_algorithm(tiny_vlms, name, preset, knobs, batch):
    model = tiny_vlms[name]
    rows, images = requests(model, PREFIXES[batch])
    applied = strategy(model, preset, **knobs)
    out, seen = run_capturing(model, applied, rows, images)
    layers = [knobs["layer"]] if isinstance(knobs["layer"], int) else knobs["layer"]
    for b, row in enumerate(rows):
        embeds, positions = unpadded(seen, b)
        image = row == model.config.image_token_id
        kept, logits = reference_llm_site(model, embeds, positions, image, preset == "fastv", knobs["keep"], layers)
        pad = seen["embeds"].shape[1] - embeds.shape[0]
        for stage, reference in zip(applied.stages[1:], kept):
            ours = stage.index[b][stage.valid[b]] - pad
            assert torch.equal(ours, reference), (b, ours, reference)
        torch.testing.assert_close(out.first_logits[b], logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_fastv_layers_see_what_they_should_and_the_selection_holds_while_decoding(tiny_vlms):
    """FastV at K=1 on the tiny LLaVA (2 decoder layers): at prefill layer 0 sees every token and layer 1 the kept
    ones at their original positions; each decode step's layer 1 attends over exactly the kept prompt tokens
    plus the generated ones, with the prefill's selection unchanged."""
    model = tiny_vlms["llava_tiny"]
    lm = layout_of(model).language_model(model)
    rows, images = requests(model, (3, 9, 1))
    applied = strategy(model, "fastv", keep=0.25, layer=1)
    calls = {0: [], 1: []}

    def record(index):
        def hook(module, args, kwargs):
            calls[index].append((kwargs["hidden_states"].shape[1], kwargs["attention_mask"],
                                 kwargs["position_embeddings"]))
        return hook

    handles = [lm.layers[i].self_attn.register_forward_pre_hook(record(i), with_kwargs=True)  # what each attention
               for i in (0, 1)]  # receives, after the class swap's rewrite
    try:
        runner = Runner(model, strategy=applied)
        out = runner.generate(rows, images, 4, stop_at_eos=False)
        selection = applied.stages[1].index.clone()
    finally:
        for handle in handles:
            handle.remove()
        applied.remove_from_vlm(model, layout_of(model))
    L = max(len(r) for r in rows)
    kept = 16 + (L - 64)  # 25 % of the 64 image tokens, every text and padding position
    assert [c[0] for c in calls[0]] == [L, 1, 1, 1] and [c[0] for c in calls[1]] == [kept, 1, 1, 1]
    for step, (_, mask, _) in enumerate(calls[1][1:], start=1):
        assert mask.shape[-1] == kept + step  # the kept prompt and every generated token, nothing dropped again
    assert torch.equal(selection, applied.stages[1].index)
    cos_full, cos_kept = calls[0][0][2][0], calls[1][0][2][0]
    assert torch.equal(cos_kept, cos_full.gather(1, selection[..., None].expand(-1, -1, cos_full.shape[-1])))
    assert out.tokens.shape == (3, 4)


# -- the boundary: VisionZip and DivPrune ----------------------------------------------------------------------
@torch.no_grad()
def reference_visionzip(tower, pixel_values, depth: int, dominant: int, contextual: int, has_cls: bool):
    """VisionZip as the authors' CLIP encoder does it: eager attentions and hidden states of the feature layer,
    keys of that layer (head mean) from a k_proj hook; dominant = CLS + top (dominant - 1) by CLS attention
    summed over heads (no CLS: attention received, query mean, head sum; top `dominant`); the rest merged
    into `contextual` evenly spaced targets. -> (tokens [B, dominant + contextual, D], kept indices)."""
    implementation, tower.config._attn_implementation = tower.config._attn_implementation, "eager"
    keys = {}
    layer = tower.encoder.layers[depth - 1]
    hook = layer.self_attn.k_proj.register_forward_hook(lambda m, a, o: keys.__setitem__("k", o))
    try:
        out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    finally:
        hook.remove()
        tower.config._attn_implementation = implementation
    attention, hidden = out.attentions[depth - 1], out.hidden_states[depth]  # [B, H, T, T], [B, T, D]
    B, T, D = hidden.shape
    H = attention.shape[1]
    metric = keys["k"].view(B, T, H, -1).mean(dim=2)
    if has_cls:
        top = attention[:, :, 0, 1:].sum(dim=1).topk(dominant - 1, dim=1).indices + 1
        all_indices = torch.cat([torch.zeros(B, 1, dtype=top.dtype), top], dim=1)
    else:
        all_indices = attention.mean(dim=2).sum(dim=1).topk(dominant, dim=1).indices
    mask = torch.ones(B, T, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask[..., None]).view(B, dominant, D)
    metric = metric[mask].view(B, T - dominant, -1)
    filtered = hidden.masked_select(mask[..., None]).view(B, T - dominant, D)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, metric.shape[1] // contextual)
    targets = torch.arange(0, metric.shape[1], step)[:contextual]
    others = ~torch.isin(torch.arange(metric.shape[1]), targets)
    similarity = torch.bmm(metric[:, others], metric[:, targets].transpose(1, 2))
    assign = torch.zeros(B, int(others.sum()), contextual).scatter_(2, similarity.argmax(dim=2)[..., None], 1)
    counts = assign.sum(dim=1).clamp(min=1)[..., None]
    context = filtered[:, targets] + torch.bmm(assign.transpose(1, 2), filtered[:, others]) / counts
    return torch.cat([dominant_tokens, context], dim=1), all_indices.sort(dim=1).values


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("tokens", [16, 40])
def test_visionzip_matches_the_authors_algorithm_on_llava(tiny_vlms, tokens, batch):
    model = tiny_vlms["llava_tiny"]
    rows, images = requests(model, PREFIXES[batch])
    tower = model.model.vision_tower
    dominant = round(27 * tokens / 32)
    expected, indices = reference_visionzip(tower, images["pixel_values"], 3, dominant, tokens - dominant, True)
    expected = model.model.multi_modal_projector(expected)  # [B, tokens, D_llm]: CLS, dominant, contextual
    applied = strategy(model, "visionzip", tokens=tokens)
    out, seen = run_capturing(model, applied, rows, images)
    assert out.visual_tokens == [tokens] * len(rows)
    assert torch.equal(applied.origin[:, :dominant] + 1, indices)  # CLS (-1 -> 0) and the dominant patches
    L = seen["embeds"].shape[1]
    torch.testing.assert_close(seen["embeds"][:, L - 5 - tokens: L - 5], expected, rtol=0, atol=1e-5)
    for b, row in enumerate(rows):  # the first token's logits: the stock LLM on the reference's prompt
        image = (row == model.config.image_token_id).nonzero()[:, 0]
        text = model.get_input_embeddings()
        prompt = torch.cat([text(row[: image[0]]), expected[b], text(row[image[-1] + 1:])])
        logits = lm_logits(model, prompt, torch.arange(prompt.shape[0])[None])
        torch.testing.assert_close(out.first_logits[b], logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_visionzip_without_cls_matches_the_authors_rule_on_onevision_crops(tiny_vlms):
    """OneVision's SigLIP tower (no CLS): dominance = attention received (query mean, head sum); each crop's
    tokens and kept indices equal the reference's; the packed grid then holds them at their own patches."""
    model = tiny_vlms["onevision_tiny"]
    layout = layout_of(model)
    _, images = requests(model, (4, 4, 4))
    crops = images["pixel_values"][0, :2]
    expected, indices = reference_visionzip(model.model.vision_tower, crops, 4, 14, 2, False)
    applied = strategy(model, "visionzip", tokens=16)
    try:
        tokens, origin = layout.tower_tokens(model, crops, applied, applied.hands_over)
    finally:
        applied.remove_from_vlm(model, layout)
    assert torch.equal(origin[:, :14].sort(dim=1).values, indices)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def reference_divprune(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """DivPrune as the authors' LLaVA code: cosine distance matrix, first the token whose nearest other token
    is farthest, then repeatedly the token farthest from its nearest chosen token; int(round(ratio * N))."""
    n = int(round(ratio * features.shape[0]))
    unit = features / features.norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.t()
    chosen = torch.empty(n, dtype=torch.long)
    for i in range(n):
        m2 = distance if i == 0 else torch.index_select(distance, 0, chosen[:i])
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :] if i == 0 else torch.min(m2, dim=0).values
        chosen[i] = torch.argmax(scores)
    return chosen.sort().values


@pytest.mark.parametrize("batch", PREFIXES)
@pytest.mark.parametrize("name", LAYOUTS)
def test_divprune_matches_the_authors_algorithm(tiny_vlms, name, batch):
    model = tiny_vlms[name]
    layout = layout_of(model)
    rows, images = requests(model, PREFIXES[batch])
    with torch.no_grad():
        stock = Runner(model).visual(images)  # the stock visual tokens (checked against generate elsewhere)
    applied = strategy(model, "divprune", keep=0.3)
    out, seen = run_capturing(model, applied, rows, images)
    for b, (row, image) in enumerate(zip(rows, stock)):
        kept = reference_divprune(image.embeds.float(), 0.3)
        assert out.visual_tokens[b] == len(kept)
        embeds, positions = unpadded(seen, b)
        start = int(row.tolist().index(model.config.image_token_id))
        torch.testing.assert_close(embeds[start: start + len(kept)], image.embeds[kept], rtol=0, atol=0)
        if layout.mrope:  # kept tokens keep their (t, h, w) positions
            full = layout.stock_positions(model, row, [image])
            assert torch.equal(positions[:, start: start + len(kept)], full[:, start + kept])
        torch.testing.assert_close(out.first_logits[b], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


KEEP_ONE = [(name, preset, knobs) for name in LAYOUTS for preset, knobs in
            [("fastv", dict(keep=1.0, layer=1)), ("pyramiddrop", dict(keep=1.0, layer=[0, 1])),
             ("divprune", dict(keep=1.0)), ("visionzip", dict(keep=1.0))] if not (name == "qwen2_vl_tiny" and
                                                                                  preset == "visionzip")]


@pytest.mark.parametrize("name,preset,knobs", KEEP_ONE, ids=[f"{n}-{p}" for n, p, _ in KEEP_ONE])
def test_keep_one_is_the_stock_generation(tiny_vlms, name, preset, knobs):
    model = tiny_vlms[name]
    rows, images = requests(model, (3, 9, 1))
    stock = stock_generate(model, rows, images, 5)
    applied = strategy(model, preset, **knobs)
    out, _ = run_capturing(model, applied, rows, images, 5)
    assert torch.equal(out.tokens, stock)


def test_cosine_of_the_divprune_distance_is_what_the_paper_uses():
    """A hand-built case: four tokens, two near-duplicates; keeping 3 drops one of the pair."""
    from vlm_eff.reduction.boundary import divprune_select

    features = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [-1.0, 0.1]])
    kept = divprune_select(features, 3).tolist()
    assert len(kept) == 3 and {2, 3} <= set(kept) and len({0, 1} & set(kept)) == 1
    assert F.cosine_similarity(features[0], features[1], dim=0) > 0.99
