"""Answers as a run writes them: appended per batch, durably, to one file per process under
`<run dir>/answers.parts/` (each line an answer record with its question's `index`), so that a run killed at
any moment and started again answers only what is missing; gathered at the end into `answers.jsonl`, LLaVA's
answer format in question order. `settings.json` beside the parts records what the answers depend on (model,
reduction, benchmark, generation), and a run with other settings never continues them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlm_eff.atomic import write_atomic
from vlm_eff.errors import ConfigError

PARTS, SETTINGS, ANSWERS = "answers.parts", "settings.json", "answers.jsonl"


def read_part(path: Path) -> list[dict]:
    """The whole lines of one part file (a line cut short by a kill, always the last, is left out)."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn: the write was cut short
            records.append(json.loads(line))
    return records


class AnswerLog:
    """The answers of the run in `run_dir` (`settings`: what they depend on)."""

    def __init__(self, run_dir: Path, settings: dict):
        self.run_dir, self.folder, self.settings = run_dir, run_dir / PARTS, settings

    def start(self, fresh: bool) -> None:
        """Check (or record) the settings; `fresh` discards answers already there. Call on one process only."""
        if fresh and self.folder.is_dir():
            for part in self.folder.glob("rank-*.jsonl"):
                part.unlink()
        saved = self.folder / SETTINGS
        if saved.is_file() and json.loads(saved.read_text()) != self.settings:
            differ = sorted(differences(json.loads(saved.read_text()), self.settings))
            raise ConfigError(f"{self.run_dir} holds the answers of another configuration (it differs in "
                              f"{', '.join(differ)}); give another run dir, or resume=false to answer again there")
        write_atomic(saved, json.dumps(self.settings, indent=1, sort_keys=True) + "\n")

    def answered(self) -> dict[int, dict]:
        """Question index -> its answer record, over every process's part."""
        done = {}
        for part in sorted(self.folder.glob("rank-*.jsonl")):
            for record in read_part(part):
                done[record.pop("index")] = record
        return done

    def open(self, rank: int):
        """This process's part file, open to append (a torn last line cut off first)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank-{rank}.jsonl"
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        return open(path, "a", encoding="utf-8")

    def gather(self, indices: list[int]) -> list[tuple[int, dict]]:
        """Every asked question's (index, record) in question order, written to answers.jsonl (atomically)."""
        done = self.answered()
        missing = [i for i in indices if i not in done]
        if missing:
            raise ConfigError(f"{len(missing)} question(s) have no answer in {self.folder} (the first: {missing[0]}); "
                              "run again with the same run dir to answer them")
        write_answers(self.run_dir / ANSWERS, [done[i] for i in indices])
        return [(i, done[i]) for i in indices]


def append(file, records: list[dict]) -> None:
    """Records (each with its question's `index`) to an open part file, flushed and synced to disk."""
    file.write("".join(json.dumps(record) + "\n" for record in records))
    file.flush()
    os.fsync(file.fileno())


def write_answers(path: Path, records: list[dict]) -> None:
    """Answer records as LLaVA's answers JSONL, one a line, atomically."""
    write_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(prefix + key)
    return keys


def unfinished_run(output_dir: Path, settings: dict, exclude: Path) -> Path | None:
    """The latest run dir under `output_dir` (Hydra's <date>/<time> dirs) with answers of these settings and no
    answers.jsonl yet (killed before the end), other than `exclude`."""
    candidates = []
    for saved in output_dir.glob(f"*/*/{PARTS}/{SETTINGS}"):
        run = saved.parent.parent
        if run.resolve() != exclude.resolve() and not (run / ANSWERS).is_file() and \
                json.loads(saved.read_text()) == settings:
            candidates.append((saved.parent.stat().st_mtime, run))
    return max(candidates)[1] if candidates else None
