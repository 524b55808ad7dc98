"""The LightningModules of the small VLMs' three training stages (jobs/train_vlm.py runs them, each through
`jobs.common.fit_trainer`, and saves each as a Lightning checkpoint):

    TowerModule        stage 1: every feature-layer patch token names its cell's class and its quadrant
    TextModule         stage 2: the language model alone, on text ("USER: {user} ASSISTANT: {answer}</s>")
    InstructionModule  stage 3: visual instruction tuning, the tower frozen, plus the visual tokens' alignment

Stages 1 and 2 draw their batches with `MosaicBatches` from one numpy generator, so that stage 2's parts draw on
as one sequence. Their rates follow transformers' schedules: stage 1 warms up over the first tenth, holds, then
decays linearly to zero over the last fifth (`get_wsd_schedule`); stage 2 warms up over each part's first tenth,
then holds (`get_constant_schedule_with_warmup`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import get_constant_schedule_with_warmup, get_wsd_schedule

from vlm_eff.data.cifar10_vqa import QUADRANTS, TrainingMosaics
from vlm_eff.data.questions import processor_requests
from vlm_eff.errors import ConfigError
from vlm_eff.modules import FineTuneModule

IGNORE = -100  # label of a token the loss skips
LAST = 50  # a stage's accuracy: the mean over its last 50 steps


def with_answers(tokenizer, prompt_rows: list[torch.Tensor], answers) -> dict:
    """Prompt ids [L_i] and one answer each -> input_ids, attention_mask and labels [B, L]: each prompt, the
    answer's ids and </s>, right-padded; labels only on the answer and </s>."""
    rows, labels = [], []
    for prompt, answer in zip(prompt_rows, answers):  # prompt [L_i]
        target = torch.tensor(tokenizer(" " + answer)["input_ids"] + [tokenizer.eos_token_id])
        rows.append(torch.cat([prompt, target]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE), target]))
    L = max(len(r) for r in rows)

    def pad(r: torch.Tensor, value: int) -> torch.Tensor:  # right padding to L
        return torch.cat([r, r.new_full((L - len(r),), value)])

    return {"input_ids": torch.stack([pad(r, tokenizer.pad_token_id) for r in rows]),
            "attention_mask": torch.stack([pad(torch.ones_like(r), 0) for r in rows]),
            "labels": torch.stack([pad(r, IGNORE) for r in labels])}


def class_word_ids(tokenizer, classes: list[str]) -> torch.Tensor:
    """[C] the token id of every class name (each one word of the small VLMs' vocabulary)."""
    ids = [tokenizer(" " + name)["input_ids"] for name in classes]
    if any(len(i) != 1 or i[0] == tokenizer.unk_token_id for i in ids):
        raise ConfigError(f"the tokenizer does not have every class name {list(classes)} as one word")
    return torch.tensor([i[0] for i in ids])


def quadrants(side: int) -> torch.Tensor:
    """[side * side] the quadrant (0 top left, 1 top right, 2 bottom left, 3 bottom right) of each patch."""
    rows = torch.arange(side)
    return ((rows[:, None] >= side // 2) * 2 + (rows[None, :] >= side // 2)).reshape(-1)


class MosaicBatches(DataLoader):
    """An endless loader of `encode(*stream.sample(batch_size, generator))`, drawn in the main process from
    `generator` (shared by the loaders of one stage, so they draw on as one sequence). Lightning's
    `state_dict` / `load_state_dict`: the batches drawn; a resumed loader draws other mosaics, from a generator
    seeded by (`seed`, the batches drawn before)."""

    def __init__(self, stream: TrainingMosaics, batch_size: int, generator: np.random.Generator, seed: int,
                 encode: Callable[[np.ndarray, list[dict]], tuple]):
        super().__init__(_Draws(self), batch_size=None)
        self.stream, self.size, self.rng, self.seed, self.encode = stream, batch_size, generator, seed, encode
        self.drawn = 0

    def draw(self) -> tuple:
        self.drawn += 1
        return self.encode(*self.stream.sample(self.size, self.rng))

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = state["drawn"]
        self.rng = np.random.default_rng([self.seed, self.drawn])


class _Draws(IterableDataset):
    def __init__(self, loader: MosaicBatches):
        self.loader = loader

    def __iter__(self):
        while True:
            yield self.loader.draw()


class TowerModule(pl.LightningModule):
    """Stage 1: the tower trained so that every feature-layer patch token tells its cell's class and its quadrant
    (a linear head, then discarded; cross-entropy on both), `steps` steps of AdamW (weight decay 0.05) at `lr`."""

    def __init__(self, tower: nn.Module, family, depth: int, side: int, n_classes: int, lr: float, steps: int):
        super().__init__()
        self.tower, self.family, self.depth, self.lr, self.steps = tower, family, depth, lr, steps
        self.head = nn.Linear(tower.config.hidden_size, n_classes + 4)  # the cell's class, the patch's quadrant
        quadrant = quadrants(side)  # [N]
        self.register_buffer("quadrant", quadrant, persistent=False)
        self.register_buffer("vote", F.one_hot(quadrant, 4).float() / (len(quadrant) // 4), persistent=False)  # [N, 4]
        self.hits: deque[float] = deque(maxlen=LAST)

    @property
    def cell_accuracy(self) -> float:
        """The cells the tokens' vote (the mean of each quadrant's class probabilities) got right, last steps."""
        return float(np.mean(self.hits)) if self.hits else float("nan")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixels, cells = batch  # [B, 3, H, W], [B, 4]: the cells' class indices
        tokens = self.family.hidden_states(self.tower, pixels, self.depth)[:, int(self.family.has_cls):]  # [B, N, D]
        logits = self.head(tokens)  # [B, N, classes + 4]
        target = cells[:, self.quadrant]  # [B, N]: each patch's cell class
        loss = F.cross_entropy(logits[..., :-4].flatten(0, 1), target.flatten()) + \
            F.cross_entropy(logits[..., -4:].flatten(0, 1), self.quadrant.repeat(len(cells)))
        votes = torch.einsum("bnc,nq->bqc", logits[..., :-4].softmax(-1), self.vote)  # [B, 4, classes]
        self.hits.append((votes.argmax(-1) == cells).float().mean().item())
        self.log_dict({"tower/loss": loss, "tower/cell_accuracy": self.cell_accuracy})
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)
        schedule = get_wsd_schedule(optimizer, self.steps // 10, self.steps // 5, self.steps, decay_type="linear")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        """A stage resumed with more steps: the rate its new total gives at the step it goes on from (the
        checkpoint holds the old total's, zero at its end)."""
        schedule = self.lr_schedulers()
        for group, base, factor in zip(schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
            group["lr"] = base * factor(schedule.last_epoch)


def cell_pixels(processor, classes: list[str]) -> Callable[[np.ndarray, list[dict]], tuple]:
    """Stage 1's batch: mosaics [B, H, W, 3] and their questions -> (pixels [B, 3, H, W], cells [B, 4])."""
    def encode(mosaics: np.ndarray, questions: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = processor.image_processor([Image.fromarray(m) for m in mosaics], return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor([[classes.index(c) for c in q["cell_classes"]] for q in questions])

    return encode


def subject(question: dict) -> str:
    """What a mosaic question asks about: the quadrant ("top left"), the class ("cat") or "animals"."""
    if question["kind"] == "position":
        return next(q for q in QUADRANTS if q in question["text"])
    if question["kind"] == "presence":
        return question["text"].rstrip("?").split()[-1]
    return "animals"


def ask_subject(question: dict) -> tuple[str, str]:
    """The user's turn and the answer of stage 2's first part: the question alone, answered with its subject."""
    return question["text"], subject(question)


def ask_with_words(question: dict) -> tuple[str, str]:
    """The user's turn and the answer of stage 2's second part: the image given as its cells' class words."""
    return " ".join(question["cell_classes"]) + "\n" + question["text"], question["answer"]


def ask_with_word_grid(question: dict, quadrant: torch.Tensor) -> tuple[str, str]:
    """The user's turn and the answer of stage 2's last part: the image given as one class word per visual
    token, in the tokens' order (`quadrant` [N]: each token's cell), as stage 3's aligned visual tokens will be."""
    words = " ".join(question["cell_classes"][q] for q in quadrant.tolist())
    return words + "\n" + question["text"], question["answer"]


def text_turns(processor, turn: Callable[[dict], tuple[str, str]]) -> Callable[[np.ndarray, list[dict]], tuple]:
    """Stage 2's batch: the questions (the mosaics unused) -> ("USER: {user} ASSISTANT: {answer}</s>" as
    input_ids, attention_mask and labels [B, L], the question kinds) with (user, answer) = `turn(question)`."""
    tokenizer = processor.tokenizer

    def encode(mosaics: np.ndarray, questions: list[dict]) -> tuple[dict, list[str]]:
        users, answers = zip(*map(turn, questions))
        conversations = [[{"role": "user", "content": [{"type": "text", "text": user}]}] for user in users]
        prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        prompt_rows = [torch.tensor(tokenizer(prompt)["input_ids"]) for prompt in prompts]  # [L_i]
        return with_answers(tokenizer, prompt_rows, answers), [q["kind"] for q in questions]

    return encode


class TextModule(pl.LightningModule):
    """One part of stage 2: the language model and its output layer alone (`language`: a ModuleDict of both), on
    text; AdamW (no weight decay) at `lr`, warmed up over the first tenth of `steps`. The accuracy counts whole
    answers (</s> included) per question kind over the last steps, logged to W&B as language/{name}_accuracy."""

    def __init__(self, language: nn.ModuleDict, name: str, lr: float, steps: int):
        super().__init__()
        self.language, self.name, self.lr, self.steps = language, name, lr, steps
        self.hits: deque[tuple[list[str], torch.Tensor]] = deque(maxlen=LAST)

    def accuracy(self) -> dict[str, float]:
        """Whole answers right per question kind over the last steps."""
        kinds = np.array([k for ks, _ in self.hits for k in ks])
        right = torch.cat([h for _, h in self.hits]).numpy() if self.hits else np.zeros(0)
        return {str(kind): float(right[kinds == kind].mean()) for kind in sorted(set(kinds))}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        inputs, kinds = batch
        hidden = self.language.language_model(input_ids=inputs["input_ids"],
                                              attention_mask=inputs["attention_mask"]).last_hidden_state  # [B, L, D]
        logits = self.language.lm_head(hidden)  # [B, L, V]
        target = inputs["labels"][:, 1:]  # [B, L-1]: each position's next token
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE)
        right = (logits[:, :-1].argmax(-1) == target) | (target == IGNORE)  # [B, L-1]
        self.hits.append((list(kinds), right.all(1).float().cpu()))
        overall = torch.cat([h for _, h in self.hits]).mean()
        self.log_dict({f"language/{self.name}_loss": loss, f"language/{self.name}_accuracy": overall})
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.0)
        schedule = get_constant_schedule_with_warmup(optimizer, max(1, self.steps // 10))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class InstructionModule(FineTuneModule):
    """Stage 3: next-token loss on the answer (and </s>) of "USER: <image>\\n{question} ASSISTANT: {answer}</s>",
    plus `align_weight` x the cross-entropy of every visual token (the projector's output, through the output
    embedding) against its cell's class word."""

    def __init__(self, model, processor, classes: list[str], optimizer=None, scheduler=None, align_weight: float = 0.0):
        super().__init__(optimizer, scheduler)
        self.model, self.processor, self.align_weight = model, processor, align_weight
        vision = model.config.vision_config
        self.register_buffer("quadrant", quadrants(vision.image_size // vision.patch_size), persistent=False)  # [N]
        self.register_buffer("class_ids", class_word_ids(processor.tokenizer, classes), persistent=False)  # [C]

    def encode(self, mosaics: torch.Tensor, texts, answers) -> dict:
        """Mosaics uint8 [B, H, W, 3] and their questions and answers -> the model's inputs with labels: the
        prompt as the processor builds it (one placeholder per visual token), the answer's ids and </s>,
        right-padded; labels only on the answer and </s>."""
        prompt_rows, inputs, _ = processor_requests(self.processor, [Image.fromarray(m.cpu().numpy()) for m in mosaics],
                                                    list(texts))
        return {**with_answers(self.processor.tokenizer, prompt_rows, answers), "pixel_values": inputs["pixel_values"]}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        mosaics, texts, answers, kinds, cells = batch  # cells [B, 4]: class indices, top left .. bottom right
        inputs = {k: v.to(self.device) for k, v in self.encode(mosaics, texts, answers).items()}
        handed_over = []  # the projector's output [B, N, D_llm]
        hook = self.model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: handed_over.append(o))
        try:
            out = self.model(**inputs)
        finally:
            hook.remove()
        loss = out.loss
        if self.align_weight:
            words = self.model.lm_head.weight.detach()  # the projector moves to the words, not the words to it
            class_words = F.linear(handed_over[0], words)  # [B, N, vocab]
            target = self.class_ids[cells[:, self.quadrant]]  # [B, N]: each token's cell's class word
            align = F.cross_entropy(class_words.flatten(0, 1), target.flatten())
            loss = loss + self.align_weight * align
            self.log("train/align_loss", align)
            self.log("train/align_accuracy", (class_words.argmax(-1) == target).float().mean())
        self.log("train/answer_loss", out.loss)
        self.log("train/loss", loss, prog_bar=True)
        labels = inputs["labels"]  # [B, L]
        first = (labels != IGNORE).int().argmax(dim=1)  # [B]: each row's first answer token
        rows = torch.arange(len(labels), device=labels.device)
        hit = (out.logits[rows, first - 1].argmax(-1) == labels[rows, first]).float()  # [B]
        for kind in sorted(set(kinds)):  # the answer word's accuracy per question kind (greedy, teacher-forced)
            mask = torch.tensor([k == kind for k in kinds], device=hit.device)
            self.log(f"train/acc_{kind}", hit[mask].mean(), batch_size=int(mask.sum()))
        return loss
