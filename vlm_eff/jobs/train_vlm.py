"""train.py on a generative VLM: the project's small VLMs on CIFAR-10 mosaics (vlm_eff/data/cifar10_vqa.py,
train split only), in three stages:

1. the tower (started from the project's trained dual encoder, which saw single 32 px images) adapts to
   64 px mosaics: a linear head (then discarded) reads from every feature-layer patch token the class of
   its cell and its quadrant, `tower_stage.steps` steps; saved in the run dir every
   `checkpoint_every_n_steps`, so a rerun goes on from the last save (or skips the stage);
2. the language model alone, on text: first (`language_stage.steps`) the answer to "USER: {question}
   ASSISTANT:" is the question's subject (its quadrant, its class, "animals"); then the real answer, with the
   image given as its four cells' class words ("USER: cat ship dog frog\\n{question} ASSISTANT:"), presence
   questions alone (`language_stage.presence_steps`), position questions alone (`language_stage.position_steps`),
   then every kind (`language_stage.task_steps`), then every kind with the image as one class word per visual
   token, in their order (`language_stage.grid_steps`: where a quadrant's tokens lie, learned on words as the
   aligned visual tokens will hand it over). A
   language model trained from scratch learns too slowly to carry the question's words to the answer's
   position through the chat words after them, and to compare the class asked with the image
   (the binding probe, docs/RESULTS.md 11.1); a pretrained one, as LLaVA starts from, already can. Saved in the run dir
   with its settings, so a fresh stage 3 with the same settings skips it;
3. visual instruction tuning with the tower frozen, as in LLaVA's second stage: the projector and the
   language model learn to answer; the loss is the answer's tokens and </s>, plus (`align_weight`) every
   visual token, read through the language model's (tied) output embedding, naming its cell's class: the
   projector learns to hand over what stage 2's words were. Checkpointed in the run dir and resumed by a
   rerun (the mosaic stream restarts from its seed: not bit-exact).

A rerun that resumes stage 3 skips stage 2. The export is a `save_pretrained` dir with its processor, which
evaluate.py and profile.py load with `model.path`.

Over 350 lines because stages 1 and 2 still run in their own loops (their own learning-rate code and
safetensors saves) beside stage 3's LightningModule: the recipe that trained the shipped small VLMs, kept
as it ran until those stages move to LightningModules (issue 36 leaves this open)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from safetensors.torch import load_model as load_model_file
from safetensors.torch import save_model as save_model_file
from torch import nn
from torch.utils.data import DataLoader

from vlm_eff.atomic import atomic_target, write_atomic
from vlm_eff.data.cifar10 import load_split
from vlm_eff.data.cifar10_vqa import KINDS, QUADRANTS, TrainingMosaics
from vlm_eff.data.questions import processor_requests
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import fit, fit_trainer, resume_from, run_dir
from vlm_eff.knobs import check_knobs
from vlm_eff.lora import count_parameters
from vlm_eff.models import load_model
from vlm_eff.modules import FineTuneModule
from vlm_eff.progress import Progress
from vlm_eff.runtime import resolve_device
from vlm_eff.tiny_vlm import init_tower, processor, word_tokenizer
from vlm_eff.vlms import layout_of
from vlm_eff.wandb_logging import finish, make_logger

IGNORE = -100  # label of a token the loss skips


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


class InstructionModule(FineTuneModule):
    """Next-token loss on the answer (and </s>) of "USER: <image>\\n{question} ASSISTANT: {answer}</s>", plus
    `align_weight` x the cross-entropy of every visual token (the projector's output, through the output
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


def tower_schedule(step: int, steps: int) -> float:
    """Stage 1's learning-rate factor at `step` of `steps`: a linear warm-up over the first tenth, constant, then
    a linear decay to zero over the last fifth (a tower given more steps decays at the end of its new total)."""
    return min(1.0, step / max(1, steps // 10), (steps - step + 1) / max(1, steps // 5))


def adapt_tower(model, layout, processor, stream: TrainingMosaics, stage: DictConfig, seed: int, logger,
                start: int = 0, save=None, save_every: int = 0) -> float:
    """Stage 1: train the tower so that every feature-layer patch token tells its cell's class and its quadrant
    (a linear head, cross-entropy on both), steps `start` + 1 .. `stage.steps` at `tower_schedule` (from
    `start` > 0: a tower trained that far, with a fresh head and optimizer, on other mosaics), calling
    `save(step, accuracy)` every `save_every` steps and at the last; returns the last 50 steps' cell accuracy
    of the tokens' vote (the mean of each quadrant's class probabilities)."""
    tower, family = layout.vision(model), layout.tower_family(model.config)
    vision = model.config.vision_config
    depth, quadrant = layout.feature_depth(model.config), quadrants(vision.image_size // vision.patch_size)  # [N]
    classes = stream.split.classes
    head = nn.Linear(vision.hidden_size, len(classes) + 4)  # the cell's class, the patch's quadrant
    vote = F.one_hot(quadrant, 4).float() / (len(quadrant) // 4)  # [N, 4]: the mean over each quadrant
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=stage.lr, weight_decay=0.05)
    rng, hits = np.random.default_rng([seed + 1, start] if start else seed + 1), []
    progress = Progress("train: stage 1", stage.steps - start, "mosaics")
    tower.train()
    for step in range(start + 1, stage.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * tower_schedule(step, stage.steps)
        mosaics, questions = stream.sample(stage.batch_size, rng)
        pixels = processor.image_processor([Image.fromarray(m) for m in mosaics], return_tensors="pt")["pixel_values"]
        tokens = family.hidden_states(tower, pixels, depth)[:, int(family.has_cls):]  # [B, N, D]
        logits = head(tokens)  # [B, N, classes + 4]
        cells = torch.tensor([[classes.index(c) for c in q["cell_classes"]] for q in questions])  # [B, 4]
        target = cells[:, quadrant]  # [B, N]: each patch's cell class
        loss = F.cross_entropy(logits[..., :-4].flatten(0, 1), target.flatten()) + \
            F.cross_entropy(logits[..., -4:].flatten(0, 1), quadrant.repeat(len(cells)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        votes = torch.einsum("bnc,nq->bqc", logits[..., :-4].softmax(-1), vote)  # [B, 4, classes]
        hits.append((votes.argmax(-1) == cells).float().mean().item())
        if logger is not None and step % 50 == 0:
            logger.experiment.log({"tower/cell_accuracy": float(np.mean(hits[-50:])), "tower/loss": loss.item(),
                                   "tower/step": step})
        if save is not None and (step == stage.steps or (save_every and step % save_every == 0)):
            save(step, float(np.mean(hits[-50:])))
        progress.update(len(mosaics))
    progress.close()
    return float(np.mean(hits[-50:]))


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


def teach_on_text(model, processor, stream: TrainingMosaics, turn, steps: int, stage: DictConfig,
                  rng: np.random.Generator, logger, name: str) -> dict[str, float]:
    """Train the language model alone (the tower and projector unused) on "USER: {user} ASSISTANT: {answer}</s>"
    with (user, answer) = `turn(question)` of questions from the stream; returns the last 50 steps' accuracy
    per question kind (whole answers, </s> included), logged to W&B as language/{name}_accuracy."""
    tokenizer = processor.tokenizer
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=stage.lr, weight_decay=0.0)
    hits: list[tuple[list[str], torch.Tensor]] = []
    progress = Progress(f"train: stage 2 ({name})", steps, "questions")
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = stage.lr * min(1.0, step / max(1, steps // 10))
        _, questions = stream.sample(stage.batch_size, rng)
        users, answers = zip(*map(turn, questions))
        conversations = [[{"role": "user", "content": [{"type": "text", "text": user}]}] for user in users]
        prompts = [processor.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        prompt_rows = [torch.tensor(tokenizer(prompt)["input_ids"]) for prompt in prompts]  # [L_i]
        inputs = with_answers(tokenizer, prompt_rows, answers)  # [B, L] each
        out = model(**inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        predicted = out.logits[:, :-1].argmax(-1)  # [B, L-1]: the prediction of each next token
        target = inputs["labels"][:, 1:]
        hits.append(([q["kind"] for q in questions], ((predicted == target) | (target == IGNORE)).all(1).float()))
        hits = hits[-50:]
        if logger is not None and step % 50 == 0:
            logger.experiment.log({f"language/{name}_accuracy": torch.cat([h for _, h in hits]).mean().item(),
                                   f"language/{name}_loss": out.loss.item(), "language/step": step})
        progress.update(len(questions))
    progress.close()
    kinds = np.array([k for ks, _ in hits for k in ks])
    right = torch.cat([h for _, h in hits]).numpy() if hits else np.zeros(0)
    return {str(kind): float(right[kinds == kind].mean()) for kind in sorted(set(kinds))}


def teach_language(model, processor, stream: TrainingMosaics, stage: DictConfig, seed: int, logger,
                   quadrant: torch.Tensor) -> dict:
    """Stage 2: `stage.steps` steps answering each question with its subject (`ask_subject`), then
    `stage.presence_steps` steps answering presence questions alone with the image as its cells' words
    (`ask_with_words`: mixed with the other kinds from the start, comparing the class asked with the image is
    not learned in thousands of steps, the binding probe, docs/RESULTS.md 11.1), `stage.position_steps` steps of position
    questions alone so (after presence, they stay near a third right among the other kinds), then
    `stage.task_steps` steps of every kind so, then `stage.grid_steps` steps of every kind with one word per
    visual token (`ask_with_word_grid`, `quadrant` [N]: each token's cell); returns each part's last 50 steps'
    accuracy per question kind."""
    rng = np.random.default_rng(seed + 2)
    alone = {kind: stream.with_mix({other: int(other == kind) for other in KINDS}) for kind in KINDS}
    parts = [("subject", stream, ask_subject, stage.steps),
             ("presence", alone["presence"], ask_with_words, stage.get("presence_steps", 0)),
             ("position", alone["position"], ask_with_words, stage.get("position_steps", 0)),
             ("task", stream, ask_with_words, stage.get("task_steps", 0)),
             ("grid", stream, partial(ask_with_word_grid, quadrant=quadrant), stage.get("grid_steps", 0))]
    return {name: teach_on_text(model, processor, source, turn, steps, stage, rng, logger, name)
            for name, source, turn, steps in parts if steps}


def save_atomic(module: nn.Module, path: Path) -> None:
    """`module`'s weights to the safetensors file `path`, whole or not at all."""
    with atomic_target(path) as tmp:
        save_model_file(module, str(tmp))


def tower_stage(cfg: DictConfig, model, processor, stream: TrainingMosaics, logger, saved: Path,
                resumed: bool) -> float | None:
    """Stage 1 (`adapt_tower`) with its run-dir copy in `saved` (every `cfg.checkpoint_every_n_steps` steps):
    the tower as saved there, trained on to `cfg.tower_stage.steps` if it had fewer; from the dual encoder
    where nothing is saved. Leaves the tower frozen; returns its cell accuracy (None: no stage 1 was run)."""
    layout = layout_of(model)
    stage = cfg.get("tower_stage") or OmegaConf.create({"steps": 0})
    tower, weights, summary = layout.vision(model), saved / "tower.safetensors", saved / "summary.json"
    done = 0  # stage-1 steps the saved tower has had
    if not resumed and weights.is_file():
        load_model_file(tower, weights)
        done = json.loads(summary.read_text())["steps"]
    elif not resumed:
        init_tower(tower, Path(cfg.model.init_tower))
    if not resumed and stage.steps > done:
        print(f"vlm-eff train: {cfg.model.name}: stage 1, the tower on mosaic cells, steps {done + 1}-{stage.steps}",
              flush=True)
        saved.mkdir(parents=True, exist_ok=True)

        def save(step: int, accuracy: float) -> None:  # a stopped run goes on from the last one saved
            save_atomic(tower, weights)
            write_atomic(summary, json.dumps({"cell_accuracy_last_50_steps": accuracy, "steps": step}) + "\n")

        adapt_tower(model, layout, processor, stream, stage, cfg.seed, logger, start=done, save=save,
                    save_every=cfg.checkpoint_every_n_steps)
    tower.requires_grad_(False).eval()
    return json.loads(summary.read_text())["cell_accuracy_last_50_steps"] if summary.is_file() else None


def language_stage(cfg: DictConfig, model, processor, stream: TrainingMosaics, logger, saved: Path,
                   resumed: bool) -> dict | None:
    """Stage 2 (`teach_language`) with its run-dir copy in `saved`: the language model as saved there when it
    was taught with the same settings (the stage's, the seed, the mix, the language model's config), else
    taught and saved. With `language_stage.read_from` (another run's copy, e.g. the twin's that shares the
    language model) it is read from there, never taught. Returns each part's accuracy (None: no stage 2)."""
    layout = layout_of(model)
    language = OmegaConf.to_container(cfg.get("language_stage") or OmegaConf.create({"steps": 0}), resolve=True)
    source = language.pop("read_from", None)
    text_steps = [language.get(key, 0) for key in ("steps", "presence_steps", "position_steps", "task_steps",
                                                   "grid_steps")]
    text_config = model.config.text_config.to_diff_dict()
    text_config.pop("transformers_version", None)
    recipe = json.loads(json.dumps({  # as read back from JSON
        "language_stage": language, "seed": cfg.seed, "text_config": text_config,
        "train_mix": OmegaConf.to_container(cfg.data.train_mix) if cfg.data.get("train_mix") else None}))
    if source:
        saved = Path(source).expanduser()
    weights, summary = saved / "language_model.safetensors", saved / "summary.json"
    taught = json.loads(summary.read_text()) if summary.is_file() else {}
    language_model = nn.ModuleDict({"language_model": layout.language_model(model), "lm_head": layout.lm_head(model)})
    if resumed or not any(text_steps):
        return taught.get("accuracy")
    if source and taught.get("recipe") != recipe:
        raise ConfigError(f"language_stage.read_from={source}: no stage 2 there taught with this run's settings "
                          "(train the run that writes it first, with the same language_stage, seed, data.train_mix "
                          "and language model)")
    if taught.get("recipe") == recipe:
        load_model_file(language_model, weights)
        print(f"vlm-eff train: {cfg.model.name}: stage 2 read from {saved} (taught with the same settings)",
              flush=True)
        return taught["accuracy"]
    print(f"vlm-eff train: {cfg.model.name}: stage 2, the language model on text, "
          f"{' + '.join(map(str, text_steps))} steps", flush=True)
    vision = model.config.vision_config
    accuracy = teach_language(model, processor, stream, OmegaConf.create(language), cfg.seed, logger,
                              quadrants(vision.image_size // vision.patch_size))
    saved.mkdir(parents=True, exist_ok=True)
    save_atomic(language_model, weights)
    write_atomic(summary, json.dumps({"recipe": recipe, "accuracy": accuracy}) + "\n")
    return accuracy


def train_vlm(cfg: DictConfig) -> dict:
    """Train the small VLM `cfg.model` describes on mosaics from the CIFAR-10 train split at data.root."""
    check_knobs(cfg)
    if cfg.data.name != "cifar10_vqa":
        raise ConfigError(f"train.py on a generative VLM trains on data=cifar10_vqa (CIFAR-10 mosaics), not "
                          f"data={cfg.data.name}")
    if not cfg.data.root:
        raise ConfigError("data=cifar10_vqa needs data.root=<the CIFAR-10 archive or folder> for its train split")
    if not cfg.model.get("init_tower"):
        raise ConfigError(f"model={cfg.model.name} names no model.init_tower (the trained dual encoder its tower "
                          "starts from)")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model).model.float()
    vision = model.config.vision_config
    proc = processor(word_tokenizer(), Path(cfg.model.init_tower), vision.image_size, vision.patch_size,
                     model.config.vision_feature_select_strategy)
    out_dir = run_dir()
    ckpt_path = resume_from(cfg, out_dir)
    images, labels, classes = load_split(Path(cfg.data.root).expanduser(), "train", Path(cfg.data.cache_dir))
    stream = TrainingMosaics(images, labels, classes, seed=cfg.seed,
                             mix=OmegaConf.to_container(cfg.data.train_mix) if cfg.data.get("train_mix") else None)
    logger = make_logger(cfg, out_dir)
    resumed = ckpt_path is not None  # a resumed stage 3 has the tower and language model in its checkpoint
    tower_accuracy = tower_stage(cfg, model, proc, stream, logger, out_dir / "tower_stage", resumed)
    language_accuracy = language_stage(cfg, model, proc, stream, logger, out_dir / "language_stage", resumed)
    loader = DataLoader(stream, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    module = InstructionModule(model, proc, list(stream.split.classes), instantiate(cfg.optimizer),
                               instantiate(cfg.scheduler), align_weight=cfg.get("align_weight", 0.0))
    trainable, total = count_parameters(model)

    trainer, _ = fit_trainer(cfg, device, out_dir, logger, "questions", timed=False)
    print(f"vlm-eff train: {cfg.model.name}: training the projector and the language model, {trainable:,} of "
          f"{total:,} parameters; tower from {cfg.model.init_tower} (frozen)"
          + (f"; resuming from {ckpt_path}" if ckpt_path else ""), flush=True)
    seconds = fit(trainer, module, ckpt_path, out_dir, train_dataloaders=loader)
    loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    if cfg.export_dir:
        export_dir = Path(cfg.export_dir)
        settings = {key: OmegaConf.to_container(cfg[key]) if cfg.get(key) else {}
                    for key in ("tower_stage", "language_stage")}
        model.to(torch.float16).save_pretrained(export_dir)
        proc.save_pretrained(export_dir)
        summary = {"steps": trainer.global_step, "batch_size": cfg.data.batch_size, "seed": cfg.seed,
                   "optimizer": {"lr": cfg.optimizer.lr, "weight_decay": cfg.optimizer.weight_decay},
                   "init_tower": Path(cfg.model.init_tower).name,
                   "tower_stage": {**settings["tower_stage"], "cell_accuracy": tower_accuracy},
                   "language_stage": {**settings["language_stage"], "accuracy": language_accuracy},
                   "align_weight": cfg.get("align_weight", 0.0),
                   "tower": "frozen in stage 3", "visual_tokens_in_training": "all",
                   "last_train_loss": None if np.isnan(loss) else loss,  # None: resumed with no step left
                   "wall_time_s_this_run": round(seconds, 1)}
        write_atomic(export_dir / "training_summary.json", json.dumps(summary, indent=2) + "\n")
    wandb_dir = finish(logger)
    print(f"\nvlm-eff train: {cfg.model.name}: {trainer.global_step} steps, last loss {loss:.4f}, "
          f"{seconds / 60:.1f} min" + (f"\n  exported  {cfg.export_dir}" if cfg.export_dir else "")
          + (f"\n  W&B       {wandb_dir}" if wandb_dir else ""), flush=True)
    return {"steps": trainer.global_step, "loss": loss}
