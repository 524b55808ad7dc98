"""How fast does a small Llama, trained from scratch, learn to tie a question to image tokens? The language
model half of the small VLMs (conf/model/tiny_llava_cifar10.yaml) on the mosaic questions with *perfect*
visual features, so that only the binding is measured: every "visual token" of a side x side grid is a
fixed random vector of its cell's class plus a fixed random vector of its grid position, through a trained
2-layer GELU projector (or, with --text, the class word's own embedding). Kinds as vlm_eff/data/cifar10_vqa.py:
position (which class is in a quadrant; chance 10 %), presence (is there a class; 50 %), count (how many
animals; 20 %). The loss is the first answer token's; the accuracy of every 50 steps is printed and written.

    python scripts/binding_probe.py --order image-first --tail 0 --steps 300 \
        --out outputs/binding/image-first-tail0.json
    python scripts/binding_probe.py --order image-first --tail 3 --steps 300 \
        --out outputs/binding/image-first-tail3.json
    python scripts/binding_probe.py --order image-first --tail 3 --copy-steps 300 --steps 300 \
        --out outputs/binding/image-first-tail3-copy.json
    python scripts/binding_probe.py --kinds presence --tail 0 --steps 300 --out outputs/binding/presence-tail0.json
    python scripts/binding_probe.py --kinds presence --text --side 2 --tail 3 --copy-steps 300 --steps 1500 \
        --out outputs/binding/presence-words-tail3.json
    python scripts/binding_probe.py --kinds presence --tail 3 --copy-steps 300 --text-steps 1500 --align \
        --steps 400 --out outputs/binding/presence-words-then-image.json
(docs/RESULTS.md section 11; about 5 minutes each on one core)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from vlm_eff.data.cifar10_vqa import ANIMALS, KINDS, QUADRANTS, VEHICLES
from vlm_eff.results import write_atomic

CLASSES = ANIMALS + VEHICLES
# token ids: 0 <s>, 1 a chat word after the question, then the class words, the quadrant words, the three
# question words, yes / no, the counts
BOS, CHAT, CLASS0, QUAD0 = 0, 1, 2, 2 + len(CLASSES)
ASK = {kind: QUAD0 + len(QUADRANTS) + i for i, kind in enumerate(KINDS)}  # "what is in", "is there", "how many"
YES, NO = ASK["count"] + 1, ASK["count"] + 2
COUNT0 = NO + 1
VOCAB = COUNT0 + len(QUADRANTS) + 1


def quadrant_of(side: int) -> torch.Tensor:
    """[side * side] the quadrant of every grid position, raster order."""
    rows = torch.arange(side)
    return ((rows[:, None] >= side // 2) * 2 + (rows[None, :] >= side // 2)).reshape(-1)


def draw(n: int, kinds: list[str], generator: torch.Generator) -> dict:
    """n questions: kind, the four cell classes, the quadrant or class asked, the answer token."""
    kind = torch.tensor([KINDS.index(kinds[i]) for i in torch.randint(len(kinds), (n,), generator=generator)])
    cells = torch.randint(len(CLASSES), (n, 4), generator=generator)  # [n, 4]
    where = torch.randint(4, (n,), generator=generator)
    asked = torch.randint(len(CLASSES), (n,), generator=generator)
    present = torch.rand(n, generator=generator) < 0.5  # presence: yes and no equally often
    for i in torch.nonzero(kind == KINDS.index("presence")).flatten().tolist():
        if present[i]:
            cells[i, where[i]] = asked[i]
        else:
            others = torch.tensor([c for c in range(len(CLASSES)) if c != asked[i]])
            cells[i] = others[torch.randint(len(others), (4,), generator=generator)]
    rows = torch.arange(n)
    answer = torch.where(kind == 0, CLASS0 + cells[rows, where],
                         torch.where(kind == 1, torch.where(present, YES, NO),
                                     COUNT0 + (cells < len(ANIMALS)).sum(1)))
    subject = torch.where(kind == 0, QUAD0 + where, torch.where(kind == 1, CLASS0 + asked, ASK["count"]))
    question = torch.stack([ASK["position"] + kind, subject], 1)  # [n, 2]
    return {"kind": kind, "cells": cells, "question": question, "answer": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", choices=("image-first", "question-first"), default="image-first")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--text", action="store_true", help="visual tokens = the class words' embeddings")
    parser.add_argument("--untied", action="store_true", help="separate input and output embeddings")
    parser.add_argument("--tail", type=int, default=0,
                        help="chat tokens after the question and the image (LLaVA's \" ASSISTANT:\" is 3)")
    parser.add_argument("--text-steps", type=int, default=0,
                        help="text-only steps (after --copy-steps) on the whole task with a 2 x 2 image of class words")
    parser.add_argument("--align", action="store_true",
                        help="also train each visual token, read through the output embedding, to name its class")
    parser.add_argument("--copy-steps", type=int, default=0,
                        help="text-only steps first: the answer is the question's subject word (no image)")
    parser.add_argument("--side", type=int, default=8, help="visual tokens per image = side * side")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    lm = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB,
                                      max_position_embeddings=512, tie_word_embeddings=not args.untied))
    width, n_tokens = 192, args.side * args.side
    class_vectors, position_vectors = torch.randn(len(CLASSES), width), torch.randn(n_tokens, width)
    projector = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 256))
    parameters = [*lm.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
    embed = lm.get_input_embeddings()
    history, hits, started = [], [], time.perf_counter()
    for step in range(1, args.copy_steps + 1):  # the language model learns to fetch the subject word
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        question = draw(args.batch, args.kinds, generator)["question"]  # [B, 2]
        tokens = torch.cat([torch.full((args.batch, 1), BOS), question, torch.full((args.batch, args.tail), CHAT)], 1)
        loss = F.cross_entropy(lm(input_ids=tokens).logits[:, -1], question[:, 1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if args.copy_steps:
        print(json.dumps({"copy_steps": args.copy_steps, "copy_loss": round(loss.item(), 4)}), flush=True)
    phases = [(True, 2, args.text_steps), (args.text, args.side, args.steps)]  # (text?, side, steps)
    for text, side, steps in phases:
        quadrant = quadrant_of(side)
        for step in range(1, steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, step / 50)  # linear warm-up
            batch = draw(args.batch, args.kinds, generator)
            cell_of_token = batch["cells"][:, quadrant]  # [B, N]
            if text:
                image = embed(CLASS0 + cell_of_token)  # [B, N, 256]
            else:
                image = projector(class_vectors[cell_of_token] + position_vectors)  # [B, N, 256]
            bos, question = embed(torch.full((args.batch, 1), BOS)), embed(batch["question"])  # [B, 1 | 2, 256]
            parts = [bos, image, question] if args.order == "image-first" else [bos, question, image]
            parts.append(embed(torch.full((args.batch, args.tail), CHAT)))  # the answer comes after these
            logits = lm(inputs_embeds=torch.cat(parts, 1)).logits[:, -1]  # [B, vocab]: the answer's
            loss = F.cross_entropy(logits, batch["answer"])
            if args.align and not text:  # every visual token names its cell's class through the output embedding
                words = F.linear(image, lm.lm_head.weight.detach())  # [B, N, vocab]: the words move not
                loss = loss + F.cross_entropy(words.flatten(0, 1), (CLASS0 + cell_of_token).flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            hits.append((batch["kind"], (logits.argmax(-1) == batch["answer"]).float()))
            if step % 50 == 0:
                kind, hit = torch.cat([k for k, _ in hits]), torch.cat([h for _, h in hits])
                row = {"phase": "text" if text else "image", "step": step, "loss": round(loss.item(), 4),
                       "seconds": round(time.perf_counter() - started, 1),
                       **{f"acc_{name}": round(hit[kind == i].mean().item(), 3) for i, name in enumerate(KINDS)
                          if name in args.kinds}}
                history.append(row)
                hits = []
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "history": history},
                                      indent=1) + "\n")


if __name__ == "__main__":
    main()
