"""Shared by the VLM tests: the tiny models' requests (prompts of chosen lengths, images as each layout's
processor gives them), Hugging Face's own generate on them, building a strategy, capturing the prefill."""

import torch
from conftest import ROOT
from omegaconf import OmegaConf

from vlm_eff.reduction import build_vlm
from vlm_eff.vlms import layout_of

LAYOUTS = ("llava_tiny", "onevision_tiny", "qwen2_vl_tiny")
SUFFIX = 5  # text tokens after the image in every test prompt


def requests(model, prefixes: tuple[int, ...], seed: int = 0):
    """Prompts with `prefixes[b]` text tokens, one image at its stock placeholder count, SUFFIX text tokens;
    the images as the layout's processor gives them (OneVision: images of different sizes, so of different
    crop counts; Qwen: different grids)."""
    generator = torch.Generator().manual_seed(seed)
    config, layout = model.config, layout_of(model)
    B = len(prefixes)
    if layout.name == "llava_onevision":
        sizes = torch.tensor(([[32, 32], [64, 32], [32, 64]] * B)[:B])
        crops = [layout.n_crops(config, size) for size in sizes.tolist()]
        images = {"pixel_values": torch.randn(B, max(crops), 3, 32, 32, generator=generator), "image_sizes": sizes}
    elif layout.name == "qwen2_vl":
        grids = torch.tensor(([[1, 8, 8], [1, 8, 12], [1, 4, 8]] * B)[:B])
        width = 3 * 2 * 4 * 4
        images = {"pixel_values": torch.randn(int(grids.prod(-1).sum()), width, generator=generator),
                  "image_grid_thw": grids}
    else:
        images = {"pixel_values": torch.randn(B, 3, 32, 32, generator=generator)}
    counts = [image.full for image in layout.visual_tokens(model, images)]
    rows = []
    for prefix, count in zip(prefixes, counts):
        run = layout.image_run(config)
        run = torch.cat([run[:1], run[1:2].repeat(count), run[2:]]) if len(run) == 3 else run.repeat(count)
        rows.append(torch.cat([torch.randint(10, 1000, (prefix,), generator=generator), run,
                               torch.randint(10, 1000, (SUFFIX,), generator=generator)]))
    return rows, images


def stock_generate(model, rows, images, n: int) -> torch.Tensor:
    """Hugging Face's own generate on the left-padded batch -> the new tokens [B, n]."""
    B, L = len(rows), max(len(r) for r in rows)
    ids, mask = torch.zeros(B, L, dtype=torch.long), torch.zeros(B, L, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, L - len(row):], mask[b, L - len(row):] = row, 1
    extra = {}
    if layout_of(model).mrope:
        extra["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
    out = model.generate(input_ids=ids, attention_mask=mask, **images, **extra, max_new_tokens=n, do_sample=False)
    return out[:, L:]


def strategy(model, name: str, **knobs):
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "pruning" / f"{name}.yaml"), knobs)
    built = build_vlm(cfg, layout_of(model), model.config)
    built.apply_to_vlm(model, layout_of(model))
    return built


def capture_prefill(model):
    """A pre-hook recording the language model's first call (the prefill): inputs_embeds, position_ids, the mask."""
    seen = []

    def hook(module, args, kwargs):
        if not seen:
            seen.append({"embeds": kwargs["inputs_embeds"], "positions": kwargs["position_ids"],
                         "mask": kwargs["attention_mask"]})

    return seen, layout_of(model).language_model(model).register_forward_pre_hook(hook, with_kwargs=True)


def run_capturing(model, applied, rows, images, n: int = 1, instructions=None, **knobs):
    """Generate `n` tokens with `applied` on (then removed) -> (the Output, the prefill's inputs)."""
    from vlm_eff.generation import Runner

    seen, handle = capture_prefill(model)
    try:
        out = Runner(model, strategy=applied, **knobs).generate(rows, images, n, stop_at_eos=False,
                                                                instructions=instructions)
    finally:
        handle.remove()
        applied.remove_from_vlm(model, layout_of(model))
    return out, seen[0]
