"""Checkpoint files that a kill at any moment cannot tear."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from vlm_eff.atomic import replace_atomically

TEMPORARY_PREFIX = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing to a temporary file beside the target, synced to disk,
    then renamed over it: readers (and a resumed run) see the previous checkpoint or the new one,
    never part of one. (Lightning's own writer stages the file in the system temp dir and moves it,
    which is a copy, not a rename, when that is another file system.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        replace_atomically(Path(path), lambda f: torch.save(checkpoint, f), prefix=TEMPORARY_PREFIX)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed job left behind in `folder` (never read: the checkpoint is the renamed file)."""
    for stale in folder.glob(f"{TEMPORARY_PREFIX}*"):
        stale.unlink(missing_ok=True)
