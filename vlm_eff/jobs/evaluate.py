"""evaluate.py's job: zero-shot top-1 / top-5 / per-class accuracy or image-text retrieval recall, and the
image encoder's eval throughput."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks import BENCHMARKS, benchmark
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import (
    closing_lines,
    encoder_row,
    layout_for,
    prepare,
    run_dir,
    save_row,
    test_trainer,
    tokens_text,
)
from vlm_eff.jobs.requests import evaluate_vqa
from vlm_eff.lora import check_adapter_dir, load_adapter
from vlm_eff.modules import RetrievalModule, ZeroShotModule
from vlm_eff.prompts import load_prompts
from vlm_eff.retrieval import RECALL_AT
from vlm_eff.wandb_logging import finish, make_logger


def test_row(task: str, cfg: DictConfig, module, weights: str, strategy, device, timing: dict, test_set) -> dict:
    """A results row for a test of `module` (zero-shot or retrieval) on `test_set` (shared by evaluate
    and train): the encoder's columns, the timing, and the module's metrics (per-class accuracy aside)."""
    metrics = {name: value for name, value in module.test_results().items() if name != "per_class"}
    return {
        **encoder_row(task, cfg, weights, strategy, device, module.encoder, module.dtype, test_set),
        **timing, **metrics, "n_images": len(test_set), "compile": cfg.get("compile", False),
    }


def zero_shot_module(cfg: DictConfig, model, tokenizer, data, size: int) -> ZeroShotModule:
    prompts = load_prompts(cfg.prompts)
    return ZeroShotModule(model, tokenizer, prompts.names_for(data.class_names), prompts.templates, size,
                          compile=cfg.compile)


def retrieval_module(cfg: DictConfig, model, tokenizer, data, size: int) -> RetrievalModule:
    return RetrievalModule(model, tokenizer, data.captions, data.caption_image, size, compile=cfg.compile,
                           text_batch_size=cfg.protocol.text_batch_size)


PROTOCOLS = {"zeroshot": zero_shot_module, "retrieval": retrieval_module}  # protocol.name -> its test module
VLM_PROTOCOLS = ("vqa",)  # generative VLMs: jobs/requests.py


def check_protocol(cfg: DictConfig) -> bool:
    """The protocol fits the model (dual encoder or generative VLM) and the data; True for a VLM."""
    name = cfg.protocol.name
    if name not in (*PROTOCOLS, *VLM_PROTOCOLS):
        raise ConfigError(f"protocol={name!r} is unknown; allowed: {', '.join([*PROTOCOLS, *VLM_PROTOCOLS])}")
    vlm = layout_for(cfg.model) is not None
    if vlm and name != "vqa":
        raise ConfigError(f"protocol={name} scores a dual encoder's embeddings; model={cfg.model.name} is a generative "
                          "VLM: use protocol=vqa data=vqa")
    if not vlm and name == "vqa":
        raise ConfigError(f"protocol=vqa needs a generative VLM (llava_*, onevision_*, qwen2*_vl_*); "
                          f"model={cfg.model.name} is a dual encoder: use protocol=zeroshot or retrieval")
    if name == "vqa" and cfg.data.name not in BENCHMARKS:
        raise ConfigError(f"protocol=vqa asks a benchmark's questions: data={', '.join(BENCHMARKS)} (data=vqa "
                          f"data.questions=FILE for any question file), not data={cfg.data.name}")
    if name != "vqa" and cfg.data.name in BENCHMARKS:
        raise ConfigError(f"data={cfg.data.name} holds questions for protocol=vqa, not protocol={name}")
    return vlm


def evaluate(cfg: DictConfig) -> dict:
    """Test the (reduced) model on the test split under `protocol` (zero-shot classification or
    image-text retrieval, timing the image encoder; or, for a generative VLM, vqa); write and log the row."""
    if check_protocol(cfg):
        if cfg.get("resume") is not None and not isinstance(cfg.resume, (bool, str)):
            raise ConfigError(f"resume={cfg.resume!r} is unknown; allowed: null, true, false, or a run dir to continue")
        bench = benchmark(cfg.data)
        print(f"vlm-eff evaluate: {len(bench.questions)} questions of data={bench.name} in {bench.questions.file}",
              flush=True)  # read and checked (images too) before the model loads
        return evaluate_vqa(cfg, prepare(cfg), bench)
    if cfg.protocol.name == "zeroshot":
        if "captions" in cfg.data:
            raise ConfigError("data=captions holds image-caption pairs, not classes: use protocol=retrieval with it")
        load_prompts(cfg.prompts)  # a bad prompts file fails before anything loads
    elif "captions" not in cfg.data:
        raise ConfigError(f"protocol=retrieval needs image-caption pairs: data=captions, not data={cfg.data.name}")
    adapter = cfg.lora.get("checkpoint")
    if cfg.lora.name != "none" and not adapter:
        raise ConfigError(f"lora={cfg.lora.name} needs lora.checkpoint=<a saved adapter dir> in evaluate.py")
    if adapter:
        check_adapter_dir(adapter)  # a bad lora.checkpoint fails before anything loads
    prepared = prepare(cfg)
    device, dtype, loaded, size, strategy = (prepared.device, prepared.dtype, prepared.loaded, prepared.image_size,
                                             prepared.strategy)
    tokenizer = prepared.tokenizer
    data = instantiate(cfg.data, preprocess=prepared.preprocess, seed=cfg.seed)
    data.pin_memory = device.type == "cuda"
    data.setup("test")
    if adapter:
        load_adapter(loaded.model, adapter)  # before pruning: the reduction's hooks see the adapted q/k
    strategy.apply(loaded.model)
    module = PROTOCOLS[cfg.protocol.name](cfg, loaded.model, tokenizer, data, size).to(device=device, dtype=dtype)
    module.eval()

    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    trainer, profiler = test_trainer(cfg, device, out_dir, logger, "images")
    trainer.test(module, datamodule=data, verbose=False)

    row = test_row("evaluate", cfg, module, loaded.weights + ("+lora" if adapter else ""), strategy, device,
                   profiler.summaries.get("test", {}), data.test_set)
    per_class = module.test_results().get("per_class")
    if per_class is not None:
        write_atomic(out_dir / "per_class.json", json.dumps(per_class, indent=2) + "\n")
    save_row(row, cfg, out_dir, logger, "test")
    if logger is not None and per_class is not None:
        logger.log_metrics({f"test/per_class/{name}": acc for name, acc in per_class.items()})
    wandb_dir = finish(logger)
    print_summary(row, per_class, loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir)
    return row


def print_summary(row: dict, per_class: dict | None, source: str, out_dir: Path, project_csv: Path,
                  wandb_dir: str | None) -> None:
    timing = (f"{row['throughput_img_s']:.1f} images/s, {row['latency_ms_mean']:.1f} ms/batch "
              f"({row['e2e_throughput_img_s']:.1f} images/s end to end, loading included)"
              + (" (torch.compile)" if row["compile"] else "")
              if row.get("throughput_img_s") else "not timed (no batch after warm-up)")
    lines = [
        "",
        f"vlm-eff evaluate: {row['model']} ({row['weights']} weights: {source}), strategy={row['strategy']} "
        f"keep={row['keep']} layer={row['layer']} score={row['score']}",
        *metric_lines(row, per_class),
        f"  {tokens_text(row)}, {row['gflops_per_img']:.4g} GFLOPs/image; {timing}",
        *([f"  per class {out_dir / 'per_class.json'}"] if per_class else []),
        *closing_lines(row, out_dir, project_csv, wandb_dir),
    ]
    print("\n".join(lines), flush=True)


def metric_lines(row: dict, per_class: dict | None) -> list[str]:
    if per_class is None:  # retrieval
        i2t, t2i = ("  ".join(f"R@{k} {100 * row[f'{side}_r{k}']:.2f}%" for k in RECALL_AT) for side in ("i2t", "t2i"))
        return [f"  image->text {i2t}   text->image {t2i}   on {row['n_images']} images"]
    return [f"  zero-shot top-1 {100 * row['top1']:.2f}%   top-5 {100 * row['top5']:.2f}%   on {row['n_images']} images",
            "  per class " + ", ".join(f"{name} {100 * acc:.1f}" for name, acc in per_class.items())]
