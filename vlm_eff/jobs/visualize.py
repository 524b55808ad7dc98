"""`python -m vlm_eff.visualize image=PATH model=... pruning=...`: a token map per image (token_maps.py),
the image as the model sees it with what the strategy did drawn on its patch grid, one panel per step.

Dual encoders: every encoder strategy (its steps: EViT's, ToMe's layers at a few depths). Generative
VLMs of the LLaVA layout: encoder strategies on the tower, VisionZip (its contextual groups), DivPrune
(the kept projected tokens) and FastV / PyramidDrop (the visual tokens the LLM keeps at each stage, run on
a real request: the processor's chat template with `question`, or a synthetic prompt where the model has
no processor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from PIL import Image

from vlm_eff.atomic import replace_atomically, write_atomic
from vlm_eff.data.cifar10 import IMAGE_SUFFIXES, read_image
from vlm_eff.data.questions import instructions_of, processor_requests
from vlm_eff.errors import ConfigError
from vlm_eff.generation import Instruction, reduced_runner
from vlm_eff.jobs.common import image_size, layout_of, run_dir
from vlm_eff.knobs import check_knobs
from vlm_eff.models import ImageEncoder, load_model, load_preprocess, model_config, optional_processor
from vlm_eff.reduction import build, build_vlm, trace
from vlm_eff.token_maps import Panel, cell_groups, compose, draw, one_image, pick_steps, title_of
from vlm_eff.towers import family_for
from vlm_eff.vlms import PROMPT_TEXT_TOKENS
from vlm_eff.wandb_logging import finish, make_logger


def image_paths(image) -> list[Path]:
    """`image=`: a file, a folder (its images, sorted) or a list of them -> the image files (one-line errors)."""
    if image is None or image == "":
        raise ConfigError("image= is missing: give an image file, a folder of images or a list, e.g. "
                          "image=cat.png or image=[a.png,b.png]")
    paths = []
    for item in (list(image) if isinstance(image, (list, ListConfig)) else [image]):
        path = Path(str(item)).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ConfigError(f"image={path} is a folder without images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise ConfigError(f"image={path} does not exist")
    return paths


def to_uint8(pixels: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised pixels [3, S, S] -> the image the model saw, uint8 [S, S, 3]."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    image = (pixels.float() * std + mean).clamp(0, 1) * 255
    return image.round().to(torch.uint8).permute(1, 2, 0).numpy()


class Traced(NamedTuple):
    """What one traced forward gave: the steps, each image as the model saw it, the patch grid's side, the
    CLS slots (1 where a VLM hands CLS to its LLM as the first visual token) and the weights' kind."""

    steps: list[trace.TraceStep]
    seen: list[np.ndarray]
    side: int
    with_cls: int
    weights: str


def encoder_steps(cfg: DictConfig, config, images: list[np.ndarray]) -> Traced:
    """A dual encoder: the traced steps of one forward of every image."""
    size = image_size(cfg, config.vision_config)
    strategy = build(cfg.pruning, config.vision_config, family_for(config.model_type).has_cls, cfg.seed, size)
    loaded = load_model(cfg.model, config)
    model = loaded.model.float().eval()
    preprocess = load_preprocess(cfg.model, size)
    pixels = torch.stack([preprocess(image) for image in images])  # [B, 3, S, S]
    encoder = ImageEncoder(model, size)
    strategy.apply(model)
    with torch.inference_mode(), trace.tracing() as steps:
        encoder(pixels)
    seen = [to_uint8(p, preprocess.mean.flatten(), preprocess.std.flatten()) for p in pixels]
    return Traced(steps, seen, size // config.vision_config.patch_size, 0, loaded.weights)


def vlm_steps(cfg: DictConfig, config, images: list[np.ndarray]) -> Traced:
    """A LLaVA-layout VLM: the traced steps of one request per image (the first token only)."""
    layout = layout_of(config)
    if layout.name != "llava":
        raise ConfigError(f"token maps draw one patch grid per image: model={cfg.model.name} ({layout.name}) "
                          "splits images into crops or merges patches; allowed: dual encoders and LLaVA-layout VLMs")
    strategy = build_vlm(cfg.pruning, layout, config, cfg.seed)
    loaded = load_model(cfg.model, config)
    model = loaded.model.float().eval()
    vision = config.vision_config
    with_cls = int(layout.tower_family(config).has_cls and config.vision_feature_select_strategy == "full")
    processor = optional_processor(cfg.model) if loaded.weights == "pretrained" else None
    if processor is not None:
        rows, inputs, _ = processor_requests(processor, [Image.fromarray(i) for i in images],
                                             [cfg.question] * len(images))
        pixels = inputs["pixel_values"]
        mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
        instructions = instructions_of(processor, [cfg.question] * len(images))
    else:  # random weights without a processor: the tower's size, CLIP's normalisation, a synthetic prompt
        preprocess = load_preprocess(cfg.model, vision.image_size)
        pixels = torch.stack([preprocess(image) for image in images])
        rows = [layout.synthetic_prompt(config, torch.Generator().manual_seed(cfg.seed))] * len(images)
        mean, std = preprocess.mean.flatten(), preprocess.std.flatten()
        instructions = [Instruction(cfg.question, rows[0][-PROMPT_TEXT_TOKENS[1]:])] * len(images)  # text after the image
    runner = reduced_runner(model, strategy, layout)
    with trace.tracing() as steps:
        runner.generate(
            rows, {"pixel_values": pixels}, max_new_tokens=1, instructions=instructions)
    seen = [to_uint8(p, mean, std) for p in pixels]
    return Traced(steps, seen, vision.image_size // vision.patch_size, with_cls, loaded.weights)


def panels_of(steps, b: int, seen: np.ndarray, side: int, with_cls: int, most: int, panel_px: int) -> list[Panel]:
    """Image `b`'s panels: the input, then at most `most` of its recorded steps, each about `panel_px` wide."""
    n, scale = side * side, max(1, panel_px // seen.shape[0])
    panels = [Panel(f"input: {n} patches", np.full(n, -1), draw(seen, np.full(n, -1), side, scale))]
    for index in pick_steps(len(steps), most):
        step = steps[index]
        sources = step.sources[b]  # [T, N or S]
        if step.space == "slots":
            sources = sources[:, with_cls:]  # the CLS slot stands for no patch
        sources, summary, has_cls = one_image(sources, step.summary[b])
        cells = cell_groups(sources, summary)
        noun = "visual tokens" if step.space == "slots" else "tokens"
        panels.append(Panel(title_of(step.where, sources, summary, has_cls, noun), cells,
                            draw(seen, cells, side, scale)))
    return panels


def visualize(cfg: DictConfig) -> dict:
    """Write `<out>/<image stem>.png` for every image; returns {image path: its panels}."""
    check_knobs(cfg)  # also run by the entry script; here for callers of this function
    paths = image_paths(cfg.image)
    config = model_config(cfg.model)
    images = [read_image(path) for path in paths]
    torch.manual_seed(cfg.seed)
    traced = (vlm_steps if layout_of(config) is not None else encoder_steps)(cfg, config, images)
    out_dir = Path(cfg.out) if cfg.out else run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    heading = f"{cfg.model.name}, pruning={cfg.pruning.name}" + ("  [RANDOM WEIGHTS]" if traced.weights == "random"
                                                                  else "")
    maps, written = {}, []
    for b, path in enumerate(paths):
        panels = panels_of(traced.steps, b, traced.seen[b], traced.side, traced.with_cls, cfg.panels, cfg.panel_px)
        target = out_dir / f"{path.stem}.png"
        if target in written:
            target = out_dir / f"{path.stem}_{b}.png"
        _save_png(compose(panels, f"{heading}: {path.name}"), target)
        written.append(target)
        maps[str(path)] = panels
    logger = make_logger(cfg, out_dir)
    if logger is not None:
        import wandb

        logger.experiment.log({"token_maps": [wandb.Image(str(p), caption=p.stem) for p in written]})
    write_atomic(out_dir / "token_maps.json", json.dumps(
        {str(p): [{"title": panel.title, "merged_groups": panel.merged_groups} for panel in maps[str(src)]]
         for p, src in zip(written, paths)}, indent=2) + "\n")
    wandb_dir = finish(logger)
    print(f"vlm-eff visualize: {len(written)} token map(s) in {out_dir}" + (f"\n  W&B  {wandb_dir}" if wandb_dir
                                                                               else ""), flush=True)
    return {"out_dir": out_dir, "files": written, "maps": maps}


def _save_png(image: Image.Image, target: Path) -> None:
    replace_atomically(target, lambda f: image.save(f, format="PNG"))


def map_images(job_cfg, n: int, images: Path | None, out_dir: Path) -> list[Path]:
    """The images token maps are drawn on: `n` files of `images` (a file or folder), else the first `n` images
    of the VQA set the job answered, else the first test image of each of `n` classes of the CIFAR-10 data
    the job ran on (written as PNGs into `out_dir`)."""
    from vlm_eff.benchmarks import BENCHMARKS, benchmark

    if images is not None:
        return image_paths(str(images))[:n]
    data = job_cfg.get("data", {})
    if data.get("name") in BENCHMARKS and data.get("root"):
        seen: dict[Path, None] = {}
        for question in benchmark(data).questions:  # the first n images the questions name
            if isinstance(question.image, Path):
                seen[question.image] = None
            if len(seen) == n:
                break
        return list(seen)
    if data.get("name") != "cifar10" or not data.get("root"):
        raise ConfigError(f"--token-maps needs --images PATH: the sweep ran on data={data.get('name')}, "
                          "not on CIFAR-10 images it could take")
    import numpy as np
    from PIL import Image

    from vlm_eff.data.cifar10 import load_split

    pictures, labels, classes = load_split(Path(data.root).expanduser(), "test", Path(data.cache_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for label in range(min(n, len(classes))):
        path = out_dir / f"{classes[label]}.png"
        if not path.is_file():
            Image.fromarray(pictures[int(np.flatnonzero(labels == label)[0])]).save(path)
        paths.append(path)
    return paths


def sweep_token_maps(sweep_dir: Path, n: int, images: Path | None) -> list[Path]:
    """Each finished job's token maps of `n` images, drawn with its model and pruning config."""
    from omegaconf import OmegaConf

    from vlm_eff.cli import CONF_DIR

    written = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / "results.csv").is_file() and (p / ".hydra").is_dir()):
        job = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        paths = map_images(job, n, images, sweep_dir / "token_maps" / "images")
        cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "visualize.yaml"),
                              {"model": job.model, "pruning": job.pruning, "paths": job.paths, "seed": job.seed,
                               "image": [str(p) for p in paths], "out": str(sweep_dir / "token_maps" / job_dir.name),
                               "logger": None})
        cfg.pop("defaults", None)
        written += visualize(cfg)["files"]
    return written
