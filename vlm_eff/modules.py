"""LightningModules wrapping a dual encoder (any family in `towers.FAMILIES`), and the label-free recovery of a
reduced generative VLM (`VLMDistillModule`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vlm_eff.errors import ConfigError
from vlm_eff.models import ImageEncoder
from vlm_eff.retrieval import retrieval_recalls


class ImageEncoderModule(LightningModule):
    """Runs the image path on each test batch: what profile.py times."""

    def __init__(self, encoder: ImageEncoder, dtype: torch.dtype = torch.float32, compile: bool = False):
        super().__init__()
        self.encoder = encoder.to(dtype)
        self.input_dtype = dtype
        self.run_encoder = torch.compile(encoder.forward) if compile else encoder.forward  # compiled on first call

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        (pixel_values,) = batch  # [B, 3, H, W]
        return self.run_encoder(pixel_values.to(self.input_dtype))  # [B, P]


class FineTuneModule(LightningModule):
    """What the training modules share: the optimizer and schedule from their factories, checkpoints
    that carry the global torch random state (a resumed run continues exactly), and, with
    `adapter_only`, checkpoints holding only the trainable parameters (the LoRA adapters; the frozen
    base weights come from the model the module is built on when it resumes)."""

    def __init__(self, optimizer=None, scheduler=None, adapter_only: bool = False):
        super().__init__()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.adapter_only = adapter_only
        self.strict_loading = not adapter_only

    def on_train_start(self) -> None:
        # A resumed run's loader state (`ResumableLoader`: the batches of this epoch already trained on) is
        # applied by Lightning when it first sets up the training data, which `estimated_stepping_batches`
        # (in configure_optimizers) did before the checkpoint was restored; apply it now, before any batch.
        if hasattr(self.trainer.fit_loop, "_load_combined_loader_states"):  # private in Lightning 2.x
            self.trainer.fit_loop._load_combined_loader_states()

    def trainable_shapes(self) -> dict[str, tuple]:
        return {name: tuple(p.shape) for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the global torch (and CUDA) random state (prompt template draws, dropout): a resumed run continues it
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        if self.adapter_only:
            trainable = self.trainable_shapes()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])
        if "cuda_rng_states" in checkpoint and torch.cuda.device_count() == len(checkpoint["cuda_rng_states"]):
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng_states"])
        if not self.adapter_only:
            return
        saved = {name: tuple(tensor.shape) for name, tensor in checkpoint["state_dict"].items()}
        if saved != self.trainable_shapes():
            raise ConfigError("the checkpoint's adapter does not match this run's lora config (rank, targets) "
                              "or model: resume with the same lora.* and model")

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ZeroShotModule(FineTuneModule):
    """A dual encoder as a classifier over class prompts: logits = scale * cos(image, class text
    embedding) (+ bias for SigLIP), as its family defines them.

    A class's text embedding is the normalised mean of its normalised prompt embeddings (the CLIP
    paper's prompt ensembling). `test_step` is zero-shot evaluation (text embedded once);
    `training_step` fine-tunes with the family's loss over the class prompts (CLIP: cross-entropy;
    SigLIP: sigmoid)."""

    def __init__(self, model, tokenizer, class_names: list[str], templates: list[str], image_size: int | None = None,
                 optimizer=None, scheduler=None, adapter_only: bool = False, compile: bool = False):
        super().__init__(optimizer, scheduler, adapter_only)
        self.model = model
        self.encoder = ImageEncoder(model, image_size)
        self.family = self.encoder.family
        self.run_encoder = torch.compile(self.encoder.forward) if compile else self.encoder.forward
        self.class_names, self.templates = list(class_names), list(templates)
        prompts = [template.format(name) for name in self.class_names for template in self.templates]
        tokens = self.family.tokenize(tokenizer, prompts, model.config)
        for name, value in tokens.items():  # input_ids (and CLIP's attention_mask), [C * T, L] each
            self.register_buffer(name, value, persistent=False)
        self.token_names = list(tokens)
        n = len(self.class_names)
        self.metrics = nn.ModuleDict({
            "top1": MulticlassAccuracy(n, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(n, top_k=min(5, n), average="micro"),
            "per_class": MulticlassAccuracy(n, top_k=1, average=None),
        })  # fmt: skip
        self.val_top1 = MulticlassAccuracy(n, top_k=1, average="micro")
        self.text_features: torch.Tensor | None = None

    def class_embeddings(self, template: int | None = None) -> torch.Tensor:
        """[C, P] unit vectors, one per class: averaged over all prompt templates, or of one `template`."""
        n_templates = len(self.templates) if template is None else 1
        rows = slice(None) if template is None else slice(template, None, len(self.templates))
        tokens = {name: getattr(self, name)[rows] for name in self.token_names}  # [C * T', L] each
        text = self.family.text_embedding(self.model, tokens)  # [C * T', P]
        text = F.normalize(text, dim=-1).view(len(self.class_names), n_templates, -1)  # [C, T', P]
        return F.normalize(text.mean(dim=1), dim=-1)  # [C, P]

    def logits(self, pixel_values: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.run_encoder(pixel_values), dim=-1)  # [B, P]
        return self.family.logits(self.model, image, text)  # [B, C]

    def on_test_start(self) -> None:
        with torch.no_grad():
            self.text_features = self.class_embeddings()

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixel_values, labels = batch  # [B, 3, H, W], [B]
        logits = self.logits(pixel_values.to(self.dtype), self.text_features)
        for metric in self.metrics.values():
            metric.update(logits.float(), labels)
        return logits

    def test_results(self) -> dict:
        """top1 / top5 (fractions) and per-class accuracy after `trainer.test`."""
        per_class = self.metrics["per_class"].compute().tolist()
        return {"top1": self.metrics["top1"].compute().item(), "top5": self.metrics["top5"].compute().item(),
                "per_class": dict(zip(self.class_names, per_class))}

    def on_test_epoch_end(self) -> None:
        results = self.test_results()
        # torchmetrics has already gathered every process's counts; sync_dist only averages equal values
        self.log_dict({"test/top1": results["top1"], "test/top5": results["top5"]}, sync_dist=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixel_values, labels = batch
        template = int(torch.randint(len(self.templates), ()))  # one caption style per step, like CLIP's data
        logits = self.logits(pixel_values, self.class_embeddings(template))
        loss = self.family.loss(logits, labels)
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": accuracy}, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        with torch.no_grad():
            self.text_features = self.class_embeddings()

    def validation_step(self, batch, batch_idx: int) -> None:
        pixel_values, labels = batch
        self.val_top1.update(self.logits(pixel_values, self.text_features).float(), labels)

    def on_validation_epoch_end(self) -> None:
        self.log("val/top1", self.val_top1.compute(), prog_bar=True, sync_dist=True)
        self.val_top1.reset()


class RetrievalModule(LightningModule):
    """Image-text retrieval: the images are embedded batch by batch through the (reduced) image encoder,
    which is what the profiler times; the captions once, after the last batch, `text_batch_size` at a
    time. Recall@k as `retrieval_recalls` defines it (ranking by cosine: the family's logit scale and
    bias do not change an order)."""

    def __init__(self, model, tokenizer, captions: list[str], caption_image: list[int], image_size: int | None = None,
                 compile: bool = False, text_batch_size: int = 256):
        super().__init__()
        self.model, self.tokenizer, self.text_batch_size = model, tokenizer, text_batch_size
        self.encoder = ImageEncoder(model, image_size)
        self.family = self.encoder.family
        self.run_encoder = torch.compile(self.encoder.forward) if compile else self.encoder.forward
        self.captions, self.caption_image = list(captions), torch.as_tensor(caption_image)
        self.image_features: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recalls: dict[str, float] = {}

    def on_test_epoch_start(self) -> None:
        self.image_features, self.recalls = [], {}

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixel_values, index = batch  # [B, 3, H, W], [B] (each image's position in the caption file)
        image = F.normalize(self.run_encoder(pixel_values.to(self.dtype)), dim=-1)  # [B, P]
        self.image_features.append((index.cpu(), image.float().cpu()))
        return image

    def text_embeddings(self) -> torch.Tensor:
        """[T, P] unit vectors, one per caption."""
        chunks = []
        for start in range(0, len(self.captions), self.text_batch_size):
            tokens = self.family.tokenize(self.tokenizer, self.captions[start : start + self.text_batch_size],
                                          self.model.config)
            text = self.family.text_embedding(self.model, {k: v.to(self.device) for k, v in tokens.items()})
            chunks.append(F.normalize(text.float(), dim=-1).cpu())  # [t, P]
        return torch.cat(chunks)

    def on_test_epoch_end(self) -> None:
        index = torch.cat([i for i, _ in self.image_features])  # [I]
        images = torch.empty(len(index), self.image_features[0][1].shape[-1])  # [I, P]
        images[index] = torch.cat([features for _, features in self.image_features])
        with torch.no_grad():
            text = self.text_embeddings()  # [T, P]
        self.recalls = retrieval_recalls(images @ text.T, self.caption_image)  # [I, T] similarities
        self.log_dict({f"test/{name}": value for name, value in self.recalls.items()})

    def test_results(self) -> dict:
        """i2t_r1/5/10 and t2i_r1/5/10 (fractions) after `trainer.test`."""
        return dict(self.recalls)


DISTILL_LOSSES = {
    "cosine": lambda student, teacher: (1 - F.cosine_similarity(student, teacher, dim=-1)).mean(),
    "mse": lambda student, teacher: F.mse_loss(student, teacher),
}


class DistillModule(FineTuneModule):
    """Label-free recovery: the (reduced) model's image embedding is pulled toward that of a frozen
    teacher, the unreduced model, on images alone (`DISTILL_LOSSES`: `cosine` = 1 - cos, the default;
    `mse` also matches the norm). The teacher runs once per batch under no_grad; a batch's labels,
    if the data has any, are never read."""

    def __init__(self, model, teacher, image_size: int | None = None, loss: str = "cosine", optimizer=None,
                 scheduler=None, adapter_only: bool = False):
        super().__init__(optimizer, scheduler, adapter_only)
        if loss not in DISTILL_LOSSES:
            raise ConfigError(f"objective.loss={loss!r} is unknown; allowed: {', '.join(DISTILL_LOSSES)}")
        self.model, self.loss_name = model, loss
        self.encoder = ImageEncoder(model, image_size)
        # not a submodule: the frozen teacher stays out of checkpoints, optimizers and DDP's gradient sync
        self.teacher = (ImageEncoder(teacher.requires_grad_(False).eval(), image_size),)

    def on_fit_start(self) -> None:
        self.teacher[0].to(self.device)

    def on_validation_start(self) -> None:
        self.teacher[0].to(self.device)

    def distill_loss(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher[0](pixel_values)  # [B, P], the unreduced model
        return DISTILL_LOSSES[self.loss_name](self.encoder(pixel_values), target)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.distill_loss(batch[0])  # [B, 3, H, W]; labels (batch[1], if any) unused
        self.log("train/distill_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/distill_loss", self.distill_loss(batch[0]), prog_bar=True, sync_dist=True)


VLM_DISTILL_LOSSES = ("kl", "ce")


class VLMDistillModule(FineTuneModule):
    """Label-free recovery of a reduced VLM: the unreduced model (frozen, never a submodule) answers each question
    greedily (cached per question index when the same question comes back); the reduced model, teacher-forced on
    that answer, learns the teacher's distributions on the answer's tokens (`kl`: KL at `temperature`, scaled by its
    square) or its tokens (`ce`). The answer's tokens run up to and with the teacher's end of sequence."""

    def __init__(self, student, teacher, loss: str = "kl", temperature: float = 1.0, max_new_tokens: int = 16,
                 pad_id: int = 0, optimizer=None, scheduler=None, adapter_only: bool = False):
        super().__init__(optimizer, scheduler, adapter_only)
        self.student, self.teacher = student, (teacher,)  # generation.Runner each; the teacher stays out of checkpoints
        self.model = student.model.train()  # registered: what trains, what Lightning moves and checkpoints
        self.loss_name, self.temperature, self.max_new_tokens, self.pad_id = loss, temperature, max_new_tokens, pad_id
        self.answers: dict[int, torch.Tensor] = {}  # question index -> the teacher's answer [n]

    def on_fit_start(self) -> None:
        self.teacher[0].model.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["teacher_answers"] = {key: answer.tolist() for key, answer in self.answers.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)  # a resumed run takes its targets from where the first one would
        self.answers = {key: torch.tensor(answer) for key, answer in checkpoint.get("teacher_answers", {}).items()}

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        from vlm_eff.data.questions import requests_to

        return requests_to(batch, device, self.student.embed.weight.dtype)

    def teacher_answers(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's greedy answers [B, A] (padded), where they are real [B, A] (up to and with its end of
        sequence, or all max_new_tokens), and its logits on them [B, A, V]: generate's own when it answers now, a
        teacher-forced pass when every answer is cached (the same logits)."""
        keys = [q.index for q in batch.questions] if batch.questions else [None] * batch.batch_size
        teacher, generated = self.teacher[0], None
        if any(key is None or key not in self.answers for key in keys):
            generated = teacher.generate(batch.rows, batch.images, self.max_new_tokens, pad_id=self.pad_id,
                                         instructions=batch.instructions, all_logits=True)
            stops = torch.tensor(teacher.stop_ids(), dtype=torch.long)
            answers = [tokens[: int(ended[0]) + 1] if len(ended := torch.isin(tokens, stops).nonzero()) else tokens
                       for tokens in generated.tokens.cpu()]
            self.answers.update({key: answer for key, answer in zip(keys, answers) if key is not None})
        else:
            answers = [self.answers[key] for key in keys]
        A = max(len(a) for a in answers)
        padded = torch.full((len(answers), A), self.pad_id, dtype=torch.long)
        real = torch.zeros(len(answers), A, dtype=torch.bool)
        for b, answer in enumerate(answers):
            padded[b, : len(answer)], real[b, : len(answer)] = answer, True
        padded, real = padded.to(self.device), real.to(self.device)
        if generated is not None:
            return padded, real, generated.logits[:, :A].clone()  # out of inference mode: a loss target
        with torch.no_grad():
            return padded, real, teacher.forced(batch.rows, batch.images, padded, batch.instructions)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        answers, real, target = self.teacher_answers(batch)  # [B, A], [B, A], [B, A, V]
        logits = self.student.forced(batch.rows, batch.images, answers, batch.instructions)  # [B, A, V]
        if self.loss_name == "kl":
            T = self.temperature
            per_token = F.kl_div(F.log_softmax(logits.float()[real] / T, dim=-1), F.log_softmax(target.float()[real] / T,
                                 dim=-1), log_target=True, reduction="none").sum(dim=-1) * T * T
        else:
            per_token = F.cross_entropy(logits.float()[real], answers[real], reduction="none")
        loss = per_token.mean()
        self.log("train/distill_loss", loss, prog_bar=True, batch_size=batch.batch_size)
        self.log("train/answer_agreement", (logits.argmax(-1)[real] == answers[real]).float().mean(),
                 batch_size=batch.batch_size)  # the student's greedy token is the teacher's (teacher-forced)
        return loss
