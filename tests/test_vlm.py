"""Generative VLMs on real Hugging Face models built from the tiny configs: the request runner against the
stock `generate`, what the language model receives under encoder-site reduction (against a manual
computation written here), positions, the KV cache, and the two entry points as a user runs them."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image
from vlm_requests import LAYOUTS, SUFFIX, capture_prefill, requests, run_capturing, stock_generate, strategy

from vlm_eff.generation import Runner
from vlm_eff.results import read_results
from vlm_eff.tiny_vlm import save_with_clip_processor
from vlm_eff.vlms import layout_of

KEEP_ONE = [(name, s) for name in LAYOUTS for s in (["none"] if name == "qwen2_vl_tiny" else
                                                     ["none", "cls_preserving", "tome", "pitome"])]


@pytest.mark.parametrize("prefixes", [(4,), (3, 9, 1)], ids=["batch1", "batch3"])
@pytest.mark.parametrize("name,preset", KEEP_ONE)
def test_keep_one_generates_the_stock_models_tokens(tiny_vlms, name, preset, prefixes):
    """keep 1.0 (r = 0 for merging) through the runner = Hugging Face's generate, token for token, at batch 1 and
    at batch 3 with prompts of different lengths (left padding)."""
    model = tiny_vlms[name]
    rows, images = requests(model, prefixes)
    stock = stock_generate(model, rows, images, 6)
    applied = strategy(model, preset, keep=1.0)
    try:
        out = Runner(model, strategy=applied).generate(rows, images, 6, stop_at_eos=False)
    finally:
        applied.remove_from_vlm(model, layout_of(model))
    assert torch.equal(out.tokens, stock)
    assert out.visual_tokens == [int((row == model.config.image_token_id).sum()) for row in rows]


def top_l2(x: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """The first `first` tokens and the k patches of largest L2 norm after them, in spatial order."""
    patches = x[:, first:]
    idx = patches.norm(dim=-1).topk(k, dim=1).indices.sort(dim=1).values  # [B, k]
    return torch.cat([x[:, :first], patches.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))], dim=1), idx


@torch.no_grad()
def test_llava_llm_receives_exactly_the_reduced_features(tiny_vlms):
    """cls_preserving keep 0.5 at layer 1 on LLaVA: the LLM's inputs at the image are, in spatial order, the
    projector's output of the kept patches after the 3 feature layers (layer -2 of 4), computed here by hand."""
    model = tiny_vlms["llava_tiny"]
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    rows, images = requests(model, (3, 9, 1))
    x = tower.pre_layrnorm(tower.embeddings(images["pixel_values"]))  # [B, 65, D]
    x = tower.encoder.layers[0](x, None)
    x, _ = top_l2(x, 32, first=1)  # CLS + 32 patches
    for layer in tower.encoder.layers[1:3]:
        x = layer(x, None)
    expected = projector(x[:, 1:])  # [B, 32, D_llm]: CLS dropped (default)

    out, seen = run_capturing(model, strategy(model, "cls_preserving", keep=0.5, layer=1), rows, images, 2)
    embeds = seen["embeds"]  # [B, L, D_llm], left padded
    L = embeds.shape[1]
    assert out.visual_tokens == [32, 32, 32] and L == 9 + 32 + SUFFIX
    torch.testing.assert_close(embeds[:, L - SUFFIX - 32: L - SUFFIX], expected, rtol=0, atol=1e-6)
    assert torch.equal(seen["positions"][2, -(1 + 32 + SUFFIX):], torch.arange(1 + 32 + SUFFIX))  # compact


@torch.no_grad()
def test_onevision_llm_receives_the_kept_tokens_of_every_crop_with_the_row_newlines(tiny_vlms):
    """cls_preserving keep 0.5 at layer 2 on OneVision, one 32 px image (base crop + one grid crop of 8 x 8):
    the LLM gets the base crop's kept tokens in spatial order, then the grid crop's kept tokens row by row,
    each row followed by the newline token; computed here by hand."""
    model = tiny_vlms["onevision_tiny"]
    tower, stock = model.model.vision_tower, model.model
    rows, images = requests(model, (4,))
    crops = images["pixel_values"][0, :2]  # [2, 3, 32, 32]
    x = tower.embeddings(crops)
    for layer in tower.encoder.layers[:2]:
        x = layer(x, None)
    x, idx = top_l2(x, 32, first=0)
    for layer in tower.encoder.layers[2:]:
        x = layer(x, None)
    kept = stock.multi_modal_projector(x)  # [2, 32, D_llm]
    grid = [kept[1][idx[1] // 8 == r] for r in range(8)]
    newline = stock.image_newline[None]
    expected = torch.cat([kept[0]] + [t for r in range(8) for t in (grid[r], newline)])  # [32 + 32 + 8, D]

    out, seen = run_capturing(model, strategy(model, "cls_preserving", keep=0.5, layer=2), rows, images, 2)
    assert out.visual_tokens == [72]
    embeds = seen["embeds"][0]
    torch.testing.assert_close(embeds[4: 4 + 72], expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_original_positions_keep_each_kept_token_where_it_was(tiny_vlms):
    """pruning.positions=original on LLaVA: a kept patch j sits at position (text before) + j, the text after the
    image at its position in the full sequence."""
    model = tiny_vlms["llava_tiny"]
    rows, images = requests(model, (4,))
    tower = model.model.vision_tower
    x = tower.embeddings(images["pixel_values"])
    _, idx = top_l2(x, 16, first=1)  # layer 0: the embeddings' output, before pre_layrnorm

    _, seen = run_capturing(model, strategy(model, "cls_preserving", keep=0.25, positions="original"), rows, images)
    positions = seen["positions"][0]
    assert positions.tolist() == list(range(4)) + (4 + idx[0]).tolist() + list(range(4 + 64, 4 + 64 + SUFFIX))


@torch.no_grad()
def test_qwen_positions_are_the_stock_mrope_positions(tiny_vlms):
    """Qwen2-VL: the prefill's (t, h, w) positions equal the stock get_rope_index on the padded batch."""
    model = tiny_vlms["qwen2_vl_tiny"]
    rows, images = requests(model, (3, 9, 1))
    seen, handle = capture_prefill(model)
    try:
        Runner(model).generate(rows, images, 1, stop_at_eos=False)
    finally:
        handle.remove()
    B, L = len(rows), max(len(r) for r in rows)
    ids, mask = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, L - len(row):], mask[b, L - len(row):] = row, 1
    stock, _ = model.model.get_rope_index(ids, mm_token_type_ids=(ids == model.config.image_token_id).int(),
                                          image_grid_thw=images["image_grid_thw"], attention_mask=mask)
    positions = seen[0]["positions"]  # [3, B, L]
    assert positions.shape == (3, B, L)
    assert torch.equal(positions[:, mask.bool()], stock[:, mask.bool()])
    image = ids == model.config.image_token_id
    assert not torch.equal(positions[1][image], positions[2][image])  # (t, h, w) on the grid, not one index


@torch.no_grad()
def test_kv_cache_holds_exactly_the_prompt_and_generated_tokens(tiny_vlms):
    """Cache bytes = layers x (K, V) x B x kv heads x (prompt + new - 1) x head_dim x 4 bytes, so it falls with the
    visual tokens (the last generated token is never fed back)."""
    model = tiny_vlms["llava_tiny"]
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    rows, images = requests(model, (4, 4))
    sizes = {}
    for keep in (1.0, 0.5):
        applied = strategy(model, "cls_preserving", keep=keep)
        out = Runner(model).generate(rows, images, 5, stop_at_eos=False)
        applied.remove(model.model.vision_tower)
        prompt = 4 + math.floor(64 * keep) + SUFFIX
        assert out.kv_cache_bytes == text.num_hidden_layers * 2 * 2 * text.num_key_value_heads * (prompt + 4) * head_dim * 4
        assert len(out.decode_s) == 4
        sizes[keep] = out.kv_cache_bytes
    assert sizes[0.5] < sizes[1.0]


def test_profile_cli_times_a_reduced_request(tmp_path):
    """profile.py on a VLM, as a user runs it: the request columns in results.csv."""
    result = run_script("profile.py", "model=llava_tiny", "pruning=cls_preserving", "pruning.keep=0.5", "runs=2",
                        "warmup=1", "gen_tokens=3", "data.batch_size=2", "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TTFT" in result.stdout and "RANDOM WEIGHTS" in result.stdout
    (row,) = read_results(next(tmp_path.rglob("outputs/*/*/results.csv")))
    assert row["site"] == "encoder" and float(row["visual_tokens"]) == 32 and int(row["n_images"]) == 4
    assert float(row["ttft_ms"]) == pytest.approx(float(row["vision_ms"]) + float(row["prefill_ms"]), rel=1e-4)  # CSV rounds
    assert float(row["decode_ms_per_token"]) > 0 and float(row["kv_cache_mib"]) > 0
    assert float(row["gflops_prefill"]) > 0 and float(row["gflops_per_img"]) == pytest.approx(
        float(row["gflops_vision"]) + float(row["gflops_prefill"]), rel=1e-4)
    assert int(row["tokens"]) == 1 + 32  # what the tower's last run layer sees: CLS + kept patches


def test_evaluate_vqa_writes_llava_answers_equal_to_stock_generate(tmp_path, tiny_vlms, cifar_test):
    """evaluate.py protocol=vqa on a saved tiny LLaVA and real CIFAR test images: answers.jsonl in LLaVA's format,
    one answer per question equal to Hugging Face's generate on the processor's batch; vqa_acc recomputed here."""
    from transformers import AutoProcessor

    from vlm_eff.benchmarks.generic import exact_match

    model = tiny_vlms["llava_tiny"]
    model.generation_config.eos_token_id = 49407  # saved with the CLIP tokenizer's end of text
    try:
        save_with_clip_processor(model, tmp_path / "model")
    finally:
        model.generation_config.eos_token_id = None
    (tmp_path / "images").mkdir()
    questions = []
    for i in range(5):
        Image.fromarray(cifar_test["images"][i * 100]).save(tmp_path / "images" / f"{i}.png")
        questions.append({"question_id": i, "image": f"{i}.png", "text": f"what is in image {i}?",
                          "answer": cifar_test["classes"][cifar_test["labels"][i * 100]]})
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    result = run_script("evaluate.py", "model=llava_tiny", f"model.path={tmp_path / 'model'}", "protocol=vqa",
                        "data=vqa", f"data.root={tmp_path / 'images'}", f"data.questions={tmp_path / 'q.jsonl'}",
                        "data.batch_size=2", "protocol.max_new_tokens=4", "logger=none", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(tmp_path.rglob("outputs/*/*/answers.jsonl")).parent
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == list(range(5))
    assert all(set(a) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in answers)
    assert all(a["visual_tokens"] == 64 for a in answers)

    processor = AutoProcessor.from_pretrained(tmp_path / "model")
    prompt = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
              "text": q["text"]}]}], add_generation_prompt=True) for q in questions[:2]]
    batch = processor(images=[Image.open(tmp_path / "images" / f"{i}.png") for i in range(2)], text=prompt,
                      return_tensors="pt", padding=True)
    stock = model.generate(**batch, max_new_tokens=4, do_sample=False, eos_token_id=49407)[:, batch["input_ids"].shape[1]:]
    texts = processor.tokenizer.batch_decode(stock, skip_special_tokens=True)
    assert [a["text"] for a in answers[:2]] == [t.strip() for t in texts]
    (row,) = read_results(run / "results.csv")
    expected = np.mean([exact_match(a["text"], q["answer"]) for a, q in zip(answers, questions)])
    assert float(row["vqa_acc"]) == pytest.approx(expected) and int(row["n_images"]) == 5
    assert float(row["visual_tokens"]) == 64 and float(row["ttft_ms"]) > 0


def test_sweep_report_of_requests(tmp_path):
    """A -m sweep over the three sites on the tiny LLaVA: the report's request table compares each row's TTFT and
    (vision + prefill) FLOPs with the stock row, and draws TTFT and prefill GFLOPs against visual tokens."""
    from vlm_eff.report.summary import report

    sweep = tmp_path / "sweep"
    result = run_script("profile.py", "-m", "model=llava_tiny", "pruning=none,cls_preserving,divprune,fastv",
                        "pruning.keep=0.5", "++pruning.layer=1", "runs=1", "warmup=1", "gen_tokens=2", "logger=none",
                        f"hydra.sweep.dir={sweep}", f"paths.work_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    table = report(sweep, use_wandb=False)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert {"none", "cls_preserving", "divprune", "fastv"} <= set(lines)
    assert "TTFT speed-up" in table and "encoder" in lines["cls_preserving"] and "llm" in lines["fastv"]
    assert " 32.0 " in lines["divprune"] and " 64.0 " in lines["fastv"]  # visual tokens the LLM receives
    assert (sweep / "ttft_vs_visual_tokens.png").stat().st_size > 10_000
