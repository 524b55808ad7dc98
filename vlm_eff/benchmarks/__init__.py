"""The benchmarks token-reduction papers report, read from LLaVA-1.5's evaluation layout and scored with their
official metrics (one module each, behind `base.Benchmark`), and any question file in LLaVA's format:

    vqa, cifar10_vqa   generic.py     exact match (any question JSONL; the project's CIFAR-10 mosaics)
    pope               pope.py        mean F1 over adversarial / popular / random
    mme                mme.py         perception (acc + acc+ of 10 subtasks), cognition beside it
    textvqa            textvqa.py     soft accuracy, EvalAI answer processing
    gqa                gqa.py         accuracy on testdev-balanced
    scienceqa          scienceqa.py   IMG accuracy, LLaVA's letter reading
    mmbench            mmbench.py     circular accuracy (dev); the submission file (test)
    vqav2              vqav2.py       soft accuracy (val); the submission file (test-dev)
    vizwiz             vizwiz.py      soft accuracy (val); the submission file (test)
    seed_bench         seed_bench.py  accuracy on the image questions

`benchmark(data)` builds the one `data.name` names; a new benchmark is a module and one entry in BENCHMARKS.
"""

from __future__ import annotations

from omegaconf import DictConfig

from vlm_eff.benchmarks.base import Benchmark, Question
from vlm_eff.benchmarks.generic import VQA, CifarVQA
from vlm_eff.benchmarks.gqa import GQA
from vlm_eff.benchmarks.mmbench import MMBench
from vlm_eff.benchmarks.mme import MME
from vlm_eff.benchmarks.pope import POPE
from vlm_eff.benchmarks.scienceqa import ScienceQA
from vlm_eff.benchmarks.seed_bench import SeedBench
from vlm_eff.benchmarks.textvqa import TextVQA
from vlm_eff.benchmarks.vizwiz import VizWiz
from vlm_eff.benchmarks.vqav2 import VQAv2
from vlm_eff.errors import ConfigError

__all__ = ["BENCHMARKS", "Benchmark", "Question", "benchmark"]

BENCHMARKS: dict[str, type[Benchmark]] = {cls.name: cls for cls in (
    VQA, CifarVQA, POPE, MME, TextVQA, GQA, ScienceQA, MMBench, VQAv2, VizWiz, SeedBench)}


def benchmark(data: DictConfig) -> Benchmark:
    """The benchmark `data.name` names, its files checked; an unknown name is a one-line error listing the known."""
    cls = BENCHMARKS.get(data.get("name"))
    if cls is None:
        raise ConfigError(f"data={data.get('name')} is no benchmark; known: {', '.join(BENCHMARKS)}")
    return cls(data)
