"""profile.py and evaluate.py on a generative VLM: whole requests (vision, prefill, time to first token,
decode, KV cache) timed through the Lightning callback every job uses, and the vqa protocol: a benchmark's
questions streamed through the model's processor, answers appended per batch (a killed run started again
answers only what is missing), on every process of a data-parallel run (`trainer.devices`, `trainer.num_nodes`),
gathered in question order and scored with the benchmark's official metric."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from vlm_eff.atomic import write_atomic
from vlm_eff.benchmarks import Benchmark
from vlm_eff.benchmarks.answers import AnswerLog, append, unfinished_run
from vlm_eff.data.questions import (
    QuestionBatches,
    QuestionDataModule,
    Requests,
    instructions_of,
    processor_requests,
    requests_to,
)
from vlm_eff.errors import ConfigError
from vlm_eff.generation import Instruction, Output, Runner, reduced_runner
from vlm_eff.jobs.common import Prepared, closing_lines, run_dir, save_row, test_trainer
from vlm_eff.models import model_label, optional_processor, training_of
from vlm_eff.results import base_row
from vlm_eff.runtime import device_label
from vlm_eff.vlms import PROMPT_TEXT_TOKENS, layout_of
from vlm_eff.wandb_logging import finish, make_logger

SYNTHETIC_QUESTION = "Describe the image in detail."  # profiling through a processor: any question will do


class RequestModule(pl.LightningModule):
    """Generates for each test batch of `Requests` and keeps its timing (the tensors dropped); with `answer`,
    returns each batch's answer records (`answer(batch, output)`) for the callbacks."""

    def __init__(self, runner: Runner, max_new_tokens: int, stop_at_eos: bool, pad_id: int = 0, answer=None):
        super().__init__()
        self.runner, self.max_new_tokens, self.stop_at_eos, self.pad_id = runner, max_new_tokens, stop_at_eos, pad_id
        self.answer = answer
        self.model = runner.model  # registered, so Lightning moves it to the device
        self.outputs: list[Output] = []

    def transfer_batch_to_device(self, batch: Requests, device, dataloader_idx: int) -> Requests:
        return requests_to(batch, device, self.runner.embed.weight.dtype)

    def test_step(self, batch: Requests, batch_idx: int):
        output = self.runner.generate(batch.rows, batch.images, self.max_new_tokens, self.stop_at_eos, self.pad_id,
                                      batch.instructions)
        self.outputs.append(dataclasses.replace(output, tokens=None, first_logits=None))
        return self.answer(batch, output) if self.answer else None


class AnswerWriter(pl.Callback):
    """Appends each batch's answer records to this process's part of the run's answer log, synced to disk."""

    def __init__(self, data: QuestionDataModule, settings: dict):
        self.data, self.settings, self.file = data, settings, None

    def on_test_start(self, trainer, pl_module) -> None:
        self.file = AnswerLog(Path(self.data.answers_dir), self.settings).open(trainer.global_rank)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        append(self.file, outputs)

    def on_test_end(self, trainer, pl_module) -> None:
        self.file.close()


def request_runner(prepared: Prepared) -> Runner:
    """The strategy applied to the VLM (in the job's dtype, eval mode) and its request runner."""
    return reduced_runner(prepared.loaded.model.to(prepared.dtype).eval(), prepared.strategy)


def request_row(cfg: DictConfig, prepared: Prepared, runner: Runner, module: RequestModule, profiler,
                first: Requests) -> dict:
    """The row's columns of a run of requests: per-phase times (means over the timed batches), KV cache, FLOPs per
    request (counted on `first`, a batch of them), the timing callback's summary."""
    device, strategy, model = prepared.device, prepared.strategy, runner.model
    first = module.transfer_batch_to_device(first, device, 0)
    flops = runner.flops(first.rows, first.images, first.instructions)
    timed = module.outputs[cfg.warmup:] or module.outputs[-1:]
    mean = lambda values: statistics.fmean(values) if values else None  # noqa: E731
    milliseconds = lambda values: None if not values else 1000 * statistics.fmean(values)  # noqa: E731
    decode = [t for output in timed for t in output.decode_s]
    shape = _tower_shape(runner.layout, model.config)
    tower_tokens = strategy.tokens_per_layer(*shape) if shape else []
    return {
        **base_row(cfg.task, Path(cfg.paths.root_dir)),
        "model": model_label(cfg.model, prepared.loaded.weights), "weights": prepared.loaded.weights,
        **training_of(cfg.model, prepared.loaded.weights),
        "strategy": cfg.pruning.name, **strategy.columns(), "site": strategy.site if cfg.pruning.name != "none" else "",
        "device": device_label(device), "dtype": cfg.dtype, "batch_size": cfg.data.batch_size,
        "tokens": tower_tokens[-1] if tower_tokens else "",
        "visual_tokens": mean([n for output in timed for n in output.visual_tokens]),
        "vision_ms": milliseconds([o.vision_s for o in timed]), "prefill_ms": milliseconds([o.prefill_s for o in timed]),
        "ttft_ms": milliseconds([o.ttft_s for o in timed]), "decode_ms_per_token": milliseconds(decode),
        "kv_cache_mib": None if not timed else mean([o.kv_cache_bytes for o in timed]) / 2**20,
        "gflops_vision": flops["vision"] / 1e9, "gflops_prefill": flops["prefill"] / 1e9,
        "gflops_per_decode_token": flops["decode"] / 1e9,
        "gflops_per_img": (flops["vision"] + flops["prefill"]) / 1e9,
        "gmacs_per_img": (flops["vision"] + flops["prefill"]) / 2e9,
        **profiler.summaries.get("test", {}),
    }


def _tower_shape(layout, config) -> tuple[int, int, bool]:
    """(patches per crop, layers run, CLS) of the tower the encoder site reduces; () for Qwen's own ViT."""
    family = layout.tower_family(config)
    if family is None:
        return ()
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2, layout.feature_depth(config), family.has_cls


# -- profile.py: synthetic requests -------------------------------------------------------------------------------------
def synthetic_requests(cfg: DictConfig, model, n_batches: int) -> tuple[list[Requests], str]:
    """The same request `n_batches` times, valid for the model it times: through the model's own processor and chat
    template when it has one (a fixed question, a seeded noise image at the tower's size), else a seeded prompt of
    fixed length whose ids lie inside the vocabulary (timing depends on no id or pixel value). Also says which."""
    layout, generator = layout_of(model), torch.Generator().manual_seed(cfg.seed)
    B = cfg.data.batch_size
    processor = optional_processor(cfg.model)
    if processor is None:
        images = layout.synthetic_images(model.config, B, cfg.model.image_size, generator)
        prompt = layout.synthetic_prompt(model.config, generator)
        asked = [Instruction(SYNTHETIC_QUESTION, prompt[-PROMPT_TEXT_TOKENS[1]:])] * B  # the text after the image
        return [Requests([prompt] * B, images, instructions=asked) for _ in range(n_batches)], \
            "ids drawn inside the vocabulary"
    side = layout.image_side(model.config, cfg.model.image_size)
    noise = torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy()
    rows, inputs, prompts = processor_requests(processor, [Image.fromarray(noise)] * B, [SYNTHETIC_QUESTION] * B)
    asked = instructions_of(processor, [SYNTHETIC_QUESTION] * B)
    return ([Requests(rows, layout.image_inputs(inputs), prompts=prompts, instructions=asked) for _ in range(n_batches)],
            "the model's processor and chat template")


def profile_requests(cfg: DictConfig, prepared: Prepared) -> dict:
    """profile.py on a VLM: `warmup` + `runs` batches of requests, each generating `gen_tokens` tokens."""
    batches, prompt = synthetic_requests(cfg, prepared.loaded.model, cfg.warmup + cfg.runs)
    runner = request_runner(prepared)
    module = RequestModule(runner, cfg.gen_tokens, stop_at_eos=False)
    out_dir = run_dir()
    logger = make_logger(cfg, out_dir)
    trainer, profiler = test_trainer(cfg, prepared.device, out_dir, logger, "requests")
    trainer.test(module, dataloaders=DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch),
                 verbose=False)
    row = request_row(cfg, prepared, runner, module, profiler, batches[0])
    row["n_images"] = profiler.timed_images.get("test", 0)
    save_row(row, cfg, out_dir, logger, "profile")
    wandb_dir = finish(logger)
    print_summary("profile", row, prepared.loaded.source, out_dir, Path(cfg.paths.results_csv), wandb_dir,
                  prompt=prompt)
    return row


# -- the vqa protocol ---------------------------------------------------------------------------------------------------
def selected(cfg: DictConfig, n: int) -> list[int]:
    """The indices of the questions asked: all, or a seeded subset of `data.subset` in question order."""
    if not cfg.data.get("subset") or cfg.data.subset >= n:
        return list(range(n))
    generator = torch.Generator().manual_seed(cfg.seed)
    return torch.randperm(n, generator=generator)[: cfg.data.subset].sort().values.tolist()


def answer_settings(cfg: DictConfig) -> dict:
    """What a run's answers depend on: the model, the reduction, the questions, the generation (not the batch
    size, the loader or the number of processes)."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if k not in ("batch_size", "num_workers", "cache_dir")}
    return json.loads(json.dumps({"model": OmegaConf.to_container(cfg.model, resolve=True), "data": data,
                                  "pruning": OmegaConf.to_container(cfg.pruning, resolve=True),
                                  "protocol": OmegaConf.to_container(cfg.protocol, resolve=True),
                                  "seed": cfg.seed, "dtype": cfg.dtype}))


def plan_answers(cfg: DictConfig, out_dir: Path, settings: dict, indices: list[int]) -> tuple[str, list[int]]:
    """Where the answers go and which questions are left (global rank 0): this run dir, or with `resume`=true the
    latest unfinished run of the same settings, or the run dir `resume` names; resume=false starts over."""
    resume, target = cfg.get("resume"), out_dir
    if isinstance(resume, str):
        target = Path(resume).expanduser()
        if not (target / "answers.parts").is_dir():
            raise ConfigError(f"resume={resume}: no answers there to continue (no answers.parts/ in it)")
    elif resume is True:
        target = unfinished_run(Path(cfg.paths.output_dir), settings, exclude=out_dir) or out_dir
    log = AnswerLog(target, settings)
    log.start(fresh=resume is False)
    done = log.answered()
    pending = [i for i in indices if i not in done]
    if len(pending) < len(indices):
        print(f"vlm-eff evaluate: continuing the answers in {target}: {len(indices) - len(pending)} of {len(indices)} "
              f"questions answered there, {len(pending)} to go", flush=True)
    return str(target), pending


def evaluate_vqa(cfg: DictConfig, prepared: Prepared, bench: Benchmark) -> dict:
    """evaluate.py protocol=vqa: greedy answers to the benchmark's questions, appended per batch to the run's
    answer log by every process; gathered into answers.jsonl (LLaVA's answer format, question order), scored
    (metrics.json: `score` and the details; the submission file where a server scores the split), the row."""
    indices = selected(cfg, len(bench.questions))
    processor = prepared.processor
    runner = request_runner(prepared)
    settings, out_dir = answer_settings(cfg), run_dir()
    collate = QuestionBatches(processor, runner.layout, bench)
    data = QuestionDataModule(collate, cfg.data.batch_size, cfg.data.get("num_workers"),
                              lambda: plan_answers(cfg, out_dir, settings, indices))
    model_id = model_label(cfg.model, prepared.loaded.weights)
    tokenizer = processor.tokenizer

    def answer(batch: Requests, output: Output) -> list[dict]:
        texts = tokenizer.batch_decode(output.tokens.cpu(), skip_special_tokens=True)
        return [{**bench.record(question, text.strip(), model_id, n), "index": question.index}
                for question, text, n in zip(batch.questions, texts, output.visual_tokens)]

    module = RequestModule(runner, cfg.protocol.max_new_tokens, stop_at_eos=True,
                           pad_id=tokenizer.pad_token_id or 0, answer=answer)
    logger = make_logger(cfg, out_dir)
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    parallel = devices == "auto" or devices * nodes > 1
    trainer, profiler = test_trainer(cfg, prepared.device, out_dir, logger, "requests", devices=devices,
                                     num_nodes=nodes, strategy="ddp" if parallel else "auto",
                                     use_distributed_sampler=False, callbacks=[AnswerWriter(data, settings)])
    trainer.test(module, datamodule=data, verbose=False)
    trainer.strategy.barrier("answers written")
    if not trainer.is_global_zero:  # data parallel: global rank 0 gathers, scores and writes
        return {}
    answers_dir = Path(data.answers_dir)
    pairs = [(bench.questions[i], record) for i, record in AnswerLog(answers_dir, settings).gather(indices)]
    metrics = {"benchmark": bench.name, **bench.score(pairs), "n_answered": len(pairs), "n_missing": 0}
    submission = bench.submission(pairs, answers_dir)
    if submission is not None:
        metrics["submission"] = str(submission)
    write_atomic(answers_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    row = request_row(cfg, prepared, runner, module, profiler, collate(indices[: cfg.data.batch_size]))
    row.update({"benchmark": bench.name, "benchmark_score": metrics["score"], "vqa_acc": metrics.get("vqa_acc"),
                "n_images": len(indices)})
    save_row(row, cfg, answers_dir, logger, "test")
    if logger is not None:
        logger.log_metrics({f"test/{bench.name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    wandb_dir = finish(logger)
    print_summary("evaluate", row, prepared.loaded.source, answers_dir, Path(cfg.paths.results_csv), wandb_dir,
                  metrics)
    return row


def score_line(metrics: dict) -> str:
    """The summary's line of a benchmark's score."""
    details = ", ".join(f"{k.removeprefix('vqa_acc_')} {100 * v:.1f}" for k, v in metrics.items()
                        if k.startswith("vqa_acc_") and v is not None)
    counted = f"on {metrics['n_answered']} answered questions" + (
        f" ({metrics['n_missing']} missing)" if metrics.get("n_missing") else "")
    if metrics.get("score") is None:
        return (f"  {metrics['benchmark']:<9} no ground truth here: submission file {metrics['submission']}"
                if metrics.get("submission") else f"  {metrics['benchmark']:<9} no reference answers: answers.jsonl only")
    return f"  {metrics['benchmark']:<9} score {metrics['score']:.2f} {counted}" + (f" ({details})" if details else "")


def print_summary(task: str, row: dict, source: str, out_dir: Path, project_csv: Path, wandb_dir: str | None,
                  metrics: dict | None = None, prompt: str | None = None) -> None:
    number = lambda value, digits: "n/a" if value is None else f"{value:.{digits}f}"  # noqa: E731
    decode = row["decode_ms_per_token"]
    lines = [
        "",
        f"vlm-eff {task}: {row['model']} ({row['weights']} weights: {source}), strategy={row['strategy']} "
        f"keep={row['keep']} layer={row['layer']} score={row['score']}" + (f" site={row['site']}" if row["site"] else ""),
        f"  device {row['device']}, {row['dtype']}, {row['threads']} threads, batch {row['batch_size']}; "
        f"{number(row['visual_tokens'], 1)} visual tokens per request to the LLM"
        + (f"; prompt from {prompt}" if prompt else ""),
        f"  request   TTFT {number(row['ttft_ms'], 1)} ms = vision {number(row['vision_ms'], 1)} + prefill "
        f"{number(row['prefill_ms'], 1)}; " + (f"decode {decode:.2f} ms/token" if decode is not None else "no decode step")
        + f"; KV cache {number(row['kv_cache_mib'], 2)} MiB",
        f"  latency   {row['latency_ms_mean']:.1f} ms/batch mean, {row['latency_ms_median']:.1f} median "
        f"({row.get('n_images')} requests); {row['throughput_img_s']:.2f} requests/s"
        if row.get("latency_ms_mean") is not None else "  latency   not timed (no batch after warm-up)",
        f"  FLOPs     vision {row['gflops_vision']:.3f} + prefill {row['gflops_prefill']:.3f} GFLOPs/request, "
        f"{row['gflops_per_decode_token']:.4f} GFLOPs per decoded token",
    ]
    if metrics is not None:
        lines += [score_line(metrics), f"  answers   {out_dir / 'answers.jsonl'}, metrics {out_dir / 'metrics.json'}"]
    if row.get("peak_mem_mib") is not None:
        lines.append(f"  memory    {row['peak_mem_mib']:.1f} MiB peak ({row['mem_kind']})")
    lines += closing_lines(row, out_dir, project_csv, wandb_dir)
    print("\n".join(lines), flush=True)
