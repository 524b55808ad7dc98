"""profile.py and evaluate.py on a generative VLM: whole requests (vision, prefill, time to first token,
decode, KV cache) timed through the Lightning callback every job uses, and the vqa protocol."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from vlm_eff.data.cifar10 import read_image
from vlm_eff.data.cifar10_vqa import QUESTION_FILE, ensure_test_set
from vlm_eff.data.vqa import Question, answer_record, read_questions, vqa_accuracy, write_answers
from vlm_eff.errors import ConfigError
from vlm_eff.generation import Output, Runner
from vlm_eff.jobs.common import Prepared, closing_lines, run_dir, save_row
from vlm_eff.models import hub_reachable, model_label
from vlm_eff.profiling import ProfilingCallback
from vlm_eff.results import base_row, write_atomic
from vlm_eff.runtime import device_label
from vlm_eff.vlms import layout_of
from vlm_eff.wandb_logging import finish, make_logger


@dataclass
class Requests:
    """A batch of requests: prompts (unpadded token ids, one placeholder run per image) and their images."""

    rows: list[torch.Tensor]
    images: dict  # the layout's image inputs (processor outputs) for the batch's images, in order
    questions: list[Question] | None = None
    prompts: list[str] | None = None

    @property
    def batch_size(self) -> int:
        return len(self.rows)


class RequestModule(pl.LightningModule):
    """Generates for each test batch of `Requests`; keeps each batch's `Output` for the row and answers."""

    def __init__(self, runner: Runner, max_new_tokens: int, stop_at_eos: bool, pad_id: int = 0):
        super().__init__()
        self.runner, self.max_new_tokens, self.stop_at_eos, self.pad_id = runner, max_new_tokens, stop_at_eos, pad_id
        self.model = runner.model  # registered, so Lightning moves it to the device
        self.outputs: list[tuple[Requests, Output]] = []

    def transfer_batch_to_device(self, batch: Requests, device, dataloader_idx: int) -> Requests:
        dtype = self.runner.embed.weight.dtype
        images = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.images.items()}
        return Requests([ids.to(device) for ids in batch.rows], images, batch.questions, batch.prompts)

    def test_step(self, batch: Requests, batch_idx: int) -> None:
        output = self.runner.generate(batch.rows, batch.images, self.max_new_tokens, self.stop_at_eos, self.pad_id)
        self.outputs.append((batch, output))


def run_requests(cfg: DictConfig, prepared: Prepared, batches: list[Requests], max_new_tokens: int,
                 stop_at_eos: bool, pad_id: int = 0) -> tuple[RequestModule, ProfilingCallback, dict, Path, object]:
    """Apply the strategy, time every batch of requests (the first `warmup` untimed), and build the row's
    VLM columns: per-phase times (means over the timed batches), KV cache, FLOPs per request; also
    the run dir and the W&B logger (None with logger=none)."""
    device, dtype, loaded, _, strategy = prepared
    model = loaded.model.to(dtype).eval()
    layout = layout_of(model)
    strategy.apply_to_vlm(model, layout)
    runner = Runner(model, cfg.pruning.get("positions", "compact"), strategy)
    module = RequestModule(runner, max_new_tokens, stop_at_eos, pad_id)
    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    profiler = ProfilingCallback(warmup=cfg.warmup, gpu_sample_interval_s=cfg.gpu_sample_interval_s)
    trainer = pl.Trainer(accelerator=device.type, devices=1, logger=logger or False, callbacks=[profiler],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(out_dir))
    loader = DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
    with torch.inference_mode():
        trainer.test(module, dataloaders=loader, verbose=False)
    first = module.transfer_batch_to_device(batches[0], device, 0)
    flops = runner.flops(first.rows, first.images)
    timed = [output for _, output in module.outputs[cfg.warmup:]] or [module.outputs[-1][1]]
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    decode = [t for output in timed for t in output.decode_s]
    shape = _tower_shape(layout, model.config)
    tower_tokens = strategy.tokens_per_layer(*shape) if shape else []
    row = {
        **base_row(cfg.task, Path(cfg.paths.root_dir)),
        "model": model_label(cfg.model, loaded.weights), "weights": loaded.weights, "strategy": cfg.pruning.name,
        **strategy.columns(), "site": strategy.site if cfg.pruning.name != "none" else "",
        "device": device_label(device), "dtype": cfg.dtype, "batch_size": batches[0].batch_size,
        "tokens": tower_tokens[-1] if tower_tokens else "",
        "visual_tokens": mean([n for output in timed for n in output.visual_tokens]),
        "vision_ms": 1000 * mean([o.vision_s for o in timed]), "prefill_ms": 1000 * mean([o.prefill_s for o in timed]),
        "ttft_ms": 1000 * mean([o.ttft_s for o in timed]),
        "decode_ms_per_token": None if not decode else 1000 * mean(decode),
        "kv_cache_mib": mean([o.kv_cache_bytes for o in timed]) / 2**20,
        "gflops_vision": flops["vision"] / 1e9, "gflops_prefill": flops["prefill"] / 1e9,
        "gflops_per_decode_token": flops["decode"] / 1e9,
        "gflops_per_img": (flops["vision"] + flops["prefill"]) / 1e9,
        "gmacs_per_img": (flops["vision"] + flops["prefill"]) / 2e9,
        **profiler.summaries.get("test", {}),
    }
    return module, profiler, row, out_dir, logger


def _tower_shape(layout, config) -> tuple[int, int, bool]:
    """(patches per crop, layers run, CLS) of the tower the encoder site reduces; () for Qwen's own ViT."""
    family = layout.tower_family(config)
    if family is None:
        return ()
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2, layout.feature_depth(config), family.has_cls


def synthetic_requests(cfg: DictConfig, model, n_batches: int) -> list[Requests]:
    """The same fixed request `n_batches` times: a seeded prompt of fixed length with one image (timing
    depends on no id or pixel value)."""
    layout, generator = layout_of(model), torch.Generator().manual_seed(cfg.seed)
    B = cfg.data.batch_size
    images = layout.synthetic_images(model.config, B, cfg.model.image_size, generator)
    prompt = layout.synthetic_prompt(model.config, generator)
    return [Requests([prompt] * B, images) for _ in range(n_batches)]


def profile_requests(cfg: DictConfig, prepared: Prepared) -> dict:
    """profile.py on a VLM: `warmup` + `runs` batches of requests, each generating `gen_tokens` tokens."""
    batches = synthetic_requests(cfg, prepared.loaded.model, cfg.warmup + cfg.runs)
    module, profiler, row, out_dir, logger = run_requests(cfg, prepared, batches, cfg.gen_tokens, stop_at_eos=False)
    row["n_images"] = profiler.timed_images.get("test", 0)
    save_row(row, cfg, out_dir, logger, "profile")
    wandb_dir = finish(logger)
    print_summary("profile", row, prepared.loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir)
    return row


# -- the vqa protocol ----------------------------------------------------------------------------------------
def load_processor(cfg: DictConfig):
    """The VLM's processor (tokenizer, image processor, chat template): `model.tokenizer`, else beside the
    weights (`model.path` or the hub id, cached)."""
    from transformers import AutoProcessor

    source = cfg.get("tokenizer") or cfg.get("path") or cfg.get("hub_id")
    if not source:
        raise ConfigError(f"protocol=vqa needs model={cfg.name}'s processor (tokenizer, image processor, chat "
                          "template): set model.path=<a save_pretrained dir with it> or model.tokenizer=<its dir>")
    try:
        return AutoProcessor.from_pretrained(str(source), local_files_only=not hub_reachable())
    except (OSError, ValueError) as error:
        raise ConfigError(f"no processor at {source} ({type(error).__name__}); set model.tokenizer=<a local "
                          "processor dir>") from None


def processor_requests(processor, images: list, questions: list[str]) -> tuple[list[torch.Tensor], dict, list[str]]:
    """PIL images and one question each -> through the processor's chat template (one image, then the
    question): the unpadded prompt rows, the processor's outputs, and the prompts as text."""
    conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    rows = [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return rows, inputs, prompts


class QuestionBatches:
    """Collates questions into `Requests` through the processor (`processor_requests`), left padding stripped
    into per-row prompts."""

    def __init__(self, processor, layout, config):
        self.processor, self.layout, self.config = processor, layout, config

    def __call__(self, questions: list[Question]) -> Requests:
        from PIL import Image

        images = [Image.fromarray(read_image(q.path)) for q in questions]
        rows, inputs, prompts = processor_requests(self.processor, images, [q.text for q in questions])
        return Requests(rows, self.layout.image_inputs(inputs), questions, prompts)


def question_files(data: DictConfig) -> tuple[str, str]:
    """(images root, question JSONL) of the `data` config; data=cifar10_vqa without its own questions builds
    (once, into the cache) the mosaic test set from the CIFAR-10 test split at data.root."""
    if data.name == "cifar10_vqa" and not data.get("questions"):
        if not data.root:
            raise ConfigError("data=cifar10_vqa needs data.root=<the CIFAR-10 archive or folder> to build its test set")
        folder = ensure_test_set(data.root, data.cache_dir, data.n_questions, data.set_seed)
        return str(folder), str(folder / QUESTION_FILE)
    return data.root, data.questions


def evaluate_vqa(cfg: DictConfig, prepared: Prepared) -> dict:
    """evaluate.py protocol=vqa: greedy answers to LLaVA's question JSONL, answers.jsonl in LLaVA's
    answer format, `vqa_acc` where answers are given, the request timing columns."""
    root, questions_file = question_files(cfg.data)
    questions = read_questions(questions_file, root)
    if cfg.data.get("subset"):
        generator = torch.Generator().manual_seed(cfg.seed)
        picked = torch.randperm(len(questions), generator=generator)[: cfg.data.subset].sort().values
        questions = [questions[i] for i in picked.tolist()]
    model = prepared.loaded.model
    processor = load_processor(cfg.model)
    collate = QuestionBatches(processor, layout_of(model), model.config)
    B = cfg.data.batch_size
    batches = [collate(questions[i: i + B]) for i in range(0, len(questions), B)]
    pad_id = processor.tokenizer.pad_token_id or 0
    module, profiler, row, out_dir, logger = run_requests(cfg, prepared, batches, cfg.protocol.max_new_tokens,
                                                         stop_at_eos=True, pad_id=pad_id)
    records, predictions = [], {}
    model_id = row["model"]
    for batch, output in module.outputs:
        texts = processor.tokenizer.batch_decode(output.tokens.cpu(), skip_special_tokens=True)
        for question, prompt, text, n in zip(batch.questions, batch.prompts, texts, output.visual_tokens):
            text = text.strip()
            predictions[question.question_id] = text
            records.append(answer_record(question, text, model_id, question.text, n))
    write_answers(out_dir / "answers.jsonl", records)
    metrics = vqa_accuracy(predictions, questions)
    write_atomic(out_dir / "vqa_metrics.json", json.dumps(metrics, indent=2) + "\n")
    row.update({"vqa_acc": metrics["vqa_acc"], "n_images": len(questions)})
    save_row(row, cfg, out_dir, logger, "test")
    if logger is not None:
        logger.log_metrics({f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    wandb_dir = finish(logger)
    print_summary("evaluate", row, prepared.loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir, metrics)
    return row


def print_summary(task: str, row: dict, source: str, out_dir: Path, project_csv: Path, wandb_dir: str | None,
                  metrics: dict | None = None) -> None:
    decode = row["decode_ms_per_token"]
    lines = [
        "",
        f"vlm-eff {task}: {row['model']} ({row['weights']} weights: {source}), strategy={row['strategy']} "
        f"keep={row['keep']} layer={row['layer']} score={row['score']}" + (f" site={row['site']}" if row["site"] else ""),
        f"  device {row['device']}, {row['dtype']}, {row['threads']} threads, batch {row['batch_size']}; "
        f"{row['visual_tokens']:.1f} visual tokens per request to the LLM",
        f"  request   TTFT {row['ttft_ms']:.1f} ms = vision {row['vision_ms']:.1f} + prefill {row['prefill_ms']:.1f}; "
        + (f"decode {decode:.2f} ms/token" if decode is not None else "no decode step")
        + f"; KV cache {row['kv_cache_mib']:.2f} MiB",
        f"  latency   {row['latency_ms_mean']:.1f} ms/batch mean, {row['latency_ms_median']:.1f} median "
        f"({row['n_images']} requests timed); {row['throughput_img_s']:.2f} requests/s"
        if row.get("latency_ms_mean") is not None else "  latency   not timed (no batch after warm-up)",
        f"  FLOPs     vision {row['gflops_vision']:.3f} + prefill {row['gflops_prefill']:.3f} GFLOPs/request, "
        f"{row['gflops_per_decode_token']:.4f} GFLOPs per decoded token",
    ]
    if metrics is not None:
        kinds = ", ".join(f"{k.removeprefix('vqa_acc_')} {100 * v:.1f}" for k, v in metrics.items()
                          if k.startswith("vqa_acc_") and v is not None)
        acc = metrics.get("vqa_acc")
        lines.append(f"  vqa       exact match {100 * acc:.2f}% on {metrics['n_answered']} answered questions"
                     + (f" ({kinds})" if kinds else "") if acc is not None else "  vqa       no answers given: "
                     "answers.jsonl only")
        lines.append(f"  answers   {out_dir / 'answers.jsonl'}")
    if row.get("peak_mem_mib") is not None:
        lines.append(f"  memory    {row['peak_mem_mib']:.1f} MiB peak ({row['mem_kind']})")
    lines += closing_lines(row, out_dir, project_csv, wandb_dir)
    print("\n".join(lines), flush=True)
