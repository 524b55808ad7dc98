"""Questions to a generative VLM as batches of requests: each batch's images read and put through the model's
processor (chat template, left padding stripped) by DataLoader workers, so that only the batches in flight
are in memory; the questions still to answer shared out among the processes of a data-parallel run, each
asked exactly once (no sampler padding)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vlm_eff.benchmarks import Benchmark, Question
from vlm_eff.data.loading import default_workers
from vlm_eff.generation import Instruction


@dataclass
class Requests:
    """A batch of requests: prompts (unpadded token ids, one placeholder run per image) and their images."""

    rows: list[torch.Tensor]
    images: dict  # the layout's image inputs (processor outputs) for the batch's images, in order
    questions: list[Question] | None = None
    prompts: list[str] | None = None
    instructions: list[Instruction] | None = None  # what each row asks (instruction-conditioned reductions)

    @property
    def batch_size(self) -> int:
        return len(self.rows)


def requests_to(batch: Requests, device, dtype: torch.dtype) -> Requests:
    """A batch of requests on `device`, its images in `dtype`."""
    images = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.images.items()}
    return dataclasses.replace(batch, rows=[ids.to(device) for ids in batch.rows], images=images)


def instructions_of(processor, texts: list[str]) -> list[Instruction]:
    """Each instruction as text and as the language model's token ids (the processor's tokenizer, no specials)."""
    return [Instruction(text, torch.tensor(processor.tokenizer(text, add_special_tokens=False)["input_ids"],
                                           dtype=torch.long)) for text in texts]


def processor_requests(processor, images: list, questions: list[str]) -> tuple[list[torch.Tensor], dict, list[str]]:
    """PIL images and one question each -> through the processor's chat template (one image, then the
    question): the unpadded prompt rows, the processor's outputs, and the prompts as text."""
    conversations = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    rows = [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return rows, inputs, prompts


class QuestionBatches:
    """Collates question indices of a benchmark into `Requests` (runs in the loader's workers)."""

    def __init__(self, processor, layout, benchmark: Benchmark):
        self.processor, self.layout, self.benchmark = processor, layout, benchmark

    def __call__(self, indices: list[int]) -> Requests:
        questions = [self.benchmark.questions[i] for i in indices]
        rows, inputs, prompts = processor_requests(self.processor, [q.load_image() for q in questions],
                                                   [q.text for q in questions])
        return Requests(rows, self.layout.image_inputs(inputs), questions, prompts,
                        instructions_of(self.processor, [q.instruction for q in questions]))


class QuestionDataModule(pl.LightningDataModule):
    """The questions left to answer, in question order: `plan()` (run on global rank 0 only, after the
    processes have started) says which; they reach every process, and each asks every world-size-th one."""

    def __init__(self, collate: QuestionBatches, batch_size: int, num_workers: int | None,
                 plan: Callable[[], tuple[str, list[int]]]):
        super().__init__()
        self.collate, self.batch_size, self.plan = collate, batch_size, plan
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.answers_dir: str | None = None
        self.pending: list[int] = []

    def setup(self, stage: str) -> None:
        plan = self.plan() if self.trainer.is_global_zero else None
        self.answers_dir, self.pending = self.trainer.strategy.broadcast(plan, src=0)

    def test_dataloader(self) -> DataLoader:
        mine = self.pending[self.trainer.global_rank::self.trainer.world_size]
        return DataLoader(mine, batch_size=self.batch_size, collate_fn=self.collate, num_workers=self.num_workers,
                          persistent_workers=False)
