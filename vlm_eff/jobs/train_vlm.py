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

A rerun that resumes stage 3 skips stages 1 and 2. Each stage is a LightningModule (vlm_eff/tiny_vlm_training.py)
fit by `jobs.common.fit_trainer` and saved as a Lightning checkpoint. The export is a `save_pretrained` dir
with its processor, which evaluate.py and profile.py load with `model.path`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from vlm_eff.atomic import write_atomic
from vlm_eff.data.cifar10 import load_split
from vlm_eff.data.cifar10_vqa import KINDS, TrainingMosaics
from vlm_eff.errors import ConfigError
from vlm_eff.jobs.common import check_checkpoint, fit, fit_trainer, resume_from, run_dir
from vlm_eff.knobs import check_knobs
from vlm_eff.lora import count_parameters
from vlm_eff.models import load_model
from vlm_eff.runtime import resolve_device
from vlm_eff.tiny_vlm import init_tower, processor, word_tokenizer
from vlm_eff.tiny_vlm_training import (
    InstructionModule,
    MosaicBatches,
    TextModule,
    TowerModule,
    ask_subject,
    ask_with_word_grid,
    ask_with_words,
    cell_pixels,
    quadrants,
    text_turns,
)
from vlm_eff.vlms import layout_of
from vlm_eff.wandb_logging import finish, make_logger


def weights_of(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint's module under `prefix` (e.g. "tower."), the prefix taken off."""
    state = torch.load(check_checkpoint(checkpoint, ""), map_location="cpu", weights_only=False)["state_dict"]
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def tower_stage(cfg: DictConfig, model, processor, stream: TrainingMosaics, device: torch.device, logger,
                saved: Path, resumed: bool) -> float | None:
    """Stage 1 (`TowerModule`) in `saved`: its `checkpoints/last.ckpt` every `cfg.checkpoint_every_n_steps` steps,
    `summary.json` at its end. From the dual encoder (`model.init_tower`), or going on from the checkpoint there to
    `tower_stage.steps` (a stage given more steps goes on with its head and optimizer, on other mosaics, its rate
    decaying at the end of its new total); the tower as saved there where it had its steps. Leaves the tower
    frozen; returns its cell accuracy (None: no stage 1 was run)."""
    layout = layout_of(model)
    stage = cfg.get("tower_stage") or OmegaConf.create({"steps": 0})
    tower, last, summary = layout.vision(model), saved / "checkpoints" / "last.ckpt", saved / "summary.json"
    done = torch.load(check_checkpoint(last, ""), map_location="cpu", weights_only=False)["global_step"] \
        if not resumed and last.is_file() else 0  # stage-1 steps the saved tower has had
    if not resumed:
        init_tower(tower, Path(cfg.model.init_tower))
    if not resumed and stage.steps > done:
        print(f"vlm-eff train: {cfg.model.name}: stage 1, the tower on mosaic cells, steps {done + 1}-{stage.steps}",
              flush=True)
        vision, classes = model.config.vision_config, list(stream.split.classes)
        module = TowerModule(tower, layout.tower_family(model.config), layout.feature_depth(model.config),
                             vision.image_size // vision.patch_size, len(classes), stage.lr, stage.steps)
        batches = MosaicBatches(stream, stage.batch_size, np.random.default_rng(cfg.seed + 1), cfg.seed + 1,
                                cell_pixels(processor, classes))
        trainer, _ = fit_trainer(cfg, device, saved, logger, "mosaics", timed=False, what="train: stage 1",
                                 max_steps=stage.steps, gradient_clip_val=None)
        fit(trainer, module, str(last) if done else None, saved, train_dataloaders=batches)
        write_atomic(summary, json.dumps({"cell_accuracy_last_50_steps": module.cell_accuracy,
                                          "steps": trainer.global_step}) + "\n")
    elif done:
        tower.load_state_dict(weights_of(last, "tower."))
    tower.requires_grad_(False).eval()
    return json.loads(summary.read_text())["cell_accuracy_last_50_steps"] if summary.is_file() else None


def teach_language(cfg: DictConfig, model, processor, stream: TrainingMosaics, device: torch.device, logger,
                   saved: Path) -> dict:
    """Stage 2's parts, each a `TextModule` fit (a fresh optimizer) on the language model and its output layer,
    drawing on from one generator: `language_stage.steps` steps answering each question with its subject
    (`ask_subject`), then `presence_steps` steps answering presence questions alone with the image as its cells'
    words (`ask_with_words`: mixed with the other kinds from the start, comparing the class asked with the image is
    not learned in thousands of steps, the binding probe, docs/RESULTS.md 11.1), `position_steps` steps of position
    questions alone so (after presence, they stay near a third right among the other kinds), then `task_steps`
    steps of every kind so, then `grid_steps` steps of every kind with one word per visual token
    (`ask_with_word_grid`). Saved to `saved/language_model.ckpt`; returns each part's last 50 steps' accuracy per
    question kind."""
    stage, layout, vision = cfg.language_stage, layout_of(model), model.config.vision_config
    quadrant = quadrants(vision.image_size // vision.patch_size)  # [N]: each visual token's cell
    alone = {kind: stream.with_mix({other: int(other == kind) for other in KINDS}) for kind in KINDS}
    parts = [("subject", stream, ask_subject, stage.steps),
             ("presence", alone["presence"], ask_with_words, stage.get("presence_steps", 0)),
             ("position", alone["position"], ask_with_words, stage.get("position_steps", 0)),
             ("task", stream, ask_with_words, stage.get("task_steps", 0)),
             ("grid", stream, lambda q: ask_with_word_grid(q, quadrant), stage.get("grid_steps", 0))]
    language = nn.ModuleDict({"language_model": layout.language_model(model), "lm_head": layout.lm_head(model)})
    rng, accuracy = np.random.default_rng(cfg.seed + 2), {}
    for name, source, turn, steps in parts:
        if not steps:
            continue
        module = TextModule(language, name, stage.lr, steps)
        trainer, _ = fit_trainer(cfg, device, saved, logger, "questions", timed=False, what=f"train: stage 2 ({name})",
                                 checkpoints=False, max_steps=steps, gradient_clip_val=1.0)
        trainer.fit(module, train_dataloaders=MosaicBatches(source, stage.batch_size, rng, cfg.seed + 2,
                                                            text_turns(processor, turn)))
        accuracy[name] = module.accuracy()
    trainer.save_checkpoint(saved / "language_model.ckpt", weights_only=True)
    return accuracy


def language_stage(cfg: DictConfig, model, processor, stream: TrainingMosaics, device: torch.device, logger,
                   saved: Path, resumed: bool) -> dict | None:
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
    weights, summary = saved / "language_model.ckpt", saved / "summary.json"
    taught = json.loads(summary.read_text()) if summary.is_file() else {}
    if resumed or not any(text_steps):
        return taught.get("accuracy")
    if source and taught.get("recipe") != recipe:
        raise ConfigError(f"language_stage.read_from={source}: no stage 2 there taught with this run's settings "
                          "(train the run that writes it first, with the same language_stage, seed, data.train_mix "
                          "and language model)")
    if taught.get("recipe") == recipe:
        layout.language_model(model).load_state_dict(weights_of(weights, "language.language_model."))
        layout.lm_head(model).load_state_dict(weights_of(weights, "language.lm_head."))
        print(f"vlm-eff train: {cfg.model.name}: stage 2 read from {saved} (taught with the same settings)",
              flush=True)
        return taught["accuracy"]
    print(f"vlm-eff train: {cfg.model.name}: stage 2, the language model on text, "
          f"{' + '.join(map(str, text_steps))} steps", flush=True)
    accuracy = teach_language(cfg, model, processor, stream, device, logger, saved)
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
    tower_accuracy = tower_stage(cfg, model, proc, stream, device, logger, out_dir / "tower_stage", resumed)
    language_accuracy = language_stage(cfg, model, proc, stream, device, logger, out_dir / "language_stage", resumed)
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
