"""Token maps: what a reduction did to an image, drawn on its patch grid (ToMe's merged-region picture,
the kept-token maps of the VLM papers). One panel per recorded step (reduction/trace.py):

    kept patch       untouched
    dropped patch    greyed out
    fused patch      greyed out and hatched: dropped, but averaged into a summary / fused token
    merged group     one colour per token that holds several patches (ToMe, PiToMe, VisionZip's contextual
                     tokens), outlined

`cell_groups` turns a step into one code per cell, `draw` paints it, `compose` lays the panels out with
their titles (the step and its token count) and a legend.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

KEPT, DROPPED, FUSED = -1, -2, -3  # cell codes; a code >= 0 is the merged group the cell belongs to
GREY = np.array([150, 150, 150], dtype=np.float32)
HATCH = np.array([255, 140, 0], dtype=np.uint8)
LEGEND = "grey: dropped   hatched: fused into a summary token   colour: merged into one token"


@dataclass
class Panel:
    """One drawn step: its title, the code of every cell, and the drawing (uint8 [H, W, 3])."""

    title: str
    cells: np.ndarray  # [rows * cols] codes
    image: np.ndarray

    @property
    def merged_groups(self) -> int:
        return int(self.cells.max(initial=-1)) + 1


def cell_groups(sources: torch.Tensor, summary: torch.Tensor) -> np.ndarray:
    """One step of one image: sources [T, N] (the cells each token stands for), summary [T] -> [N] codes."""
    sources, summary = sources.bool(), summary.bool()
    cells = np.full(sources.shape[1], DROPPED)
    cells[sources[summary].any(dim=0).numpy()] = FUSED
    size = sources.sum(dim=1)  # [T]
    singles = sources[(size == 1) & ~summary].any(dim=0)
    cells[singles.numpy()] = KEPT
    for group, token in enumerate(((size > 1) & ~summary).nonzero()[:, 0].tolist()):
        cells[sources[token].numpy()] = group
    return cells


def group_colour(group: int) -> np.ndarray:
    """Well separated colours: golden-ratio steps around the hue circle."""
    r, g, b = colorsys.hsv_to_rgb((group * 0.618034) % 1.0, 0.75, 0.95)
    return np.array([r, g, b], dtype=np.float32) * 255


def draw(image: np.ndarray, cells: np.ndarray, side: int, scale: int) -> np.ndarray:
    """The image uint8 [S, S, 3] on a `side` x `side` grid with each cell painted as `cells` says, upscaled
    `scale` times (nearest) -> uint8 [S * scale, S * scale, 3]."""
    canvas = np.kron(image, np.ones((scale, scale, 1), dtype=np.uint8)).astype(np.float32)  # [H, W, 3]
    cell = canvas.shape[0] // side
    grid = cells.reshape(side, side)
    yy, xx = np.mgrid[0:cell, 0:cell]
    hatch = (yy + xx) % max(4, cell // 3) == 0  # [cell, cell] diagonal lines
    edge = max(1, cell // 10)
    for r in range(side):
        for c in range(side):
            code = grid[r, c]
            if code == KEPT:
                continue
            block = canvas[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]  # a view
            if code in (DROPPED, FUSED):
                block[:] = 0.25 * block + 0.75 * GREY
                if code == FUSED:
                    block[hatch] = HATCH
                continue
            colour = group_colour(int(code))
            block[:] = 0.5 * block + 0.5 * colour
            darker = colour * 0.55
            if r == 0 or grid[r - 1, c] != code:
                block[:edge] = darker
            if r == side - 1 or grid[r + 1, c] != code:
                block[-edge:] = darker
            if c == 0 or grid[r, c - 1] != code:
                block[:, :edge] = darker
            if c == side - 1 or grid[r, c + 1] != code:
                block[:, -edge:] = darker
    return canvas.round().clip(0, 255).astype(np.uint8)


def one_image(sources: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One image's step, sources [T, N] and summary [T], without padding rows -> (sources, summary, CLS kept):
    a token standing for no cell is CLS at index 0 and padding anywhere else."""
    real = sources.any(dim=1) | summary
    has_cls = bool(len(real) and not real[0])
    real[0] = real[0] or has_cls
    return sources[real], summary[real], has_cls


def title_of(where: str, sources: torch.Tensor, summary: torch.Tensor, has_cls: bool, noun: str = "tokens") -> str:
    """"layer 3: 65 tokens (CLS, 1 summary, 60 kept, 3 merged)" for one image's step (padding removed)."""
    size = sources.sum(dim=1)
    merged = int(((size > 1) & ~summary).sum())
    parts = ["CLS" if has_cls else "", f"{int(summary.sum())} summary" if bool(summary.any()) else "",
             f"{int(((size == 1) & ~summary).sum())} kept", f"{merged} merged" if merged else ""]
    return f"{where}: {len(size)} {noun} (" + ", ".join(p for p in parts if p) + ")"


def pick_steps(n_steps: int, most: int) -> list[int]:
    """At most `most` of `n_steps` steps, evenly spaced, the last one always included."""
    if n_steps <= most:
        return list(range(n_steps))
    return sorted({round(i * (n_steps - 1) / (most - 1)) for i in range(most)}) if most > 1 else [n_steps - 1]


def _font(size: int):
    return ImageFont.load_default(size=size)


def compose(panels: list[Panel], heading: str) -> Image.Image:
    """Panels side by side, each under its title, a heading above and the legend below."""
    font, pad = _font(13), 8
    line = 18
    width = sum(p.image.shape[1] for p in panels) + pad * (len(panels) + 1)
    longest = max(len(p.title) for p in panels)
    title_lines = max(1, -(-longest * 7 // max(p.image.shape[1] for p in panels)))
    height = line + title_lines * line + max(p.image.shape[0] for p in panels) + line + 2 * pad
    sheet = Image.new("RGB", (max(width, 8 * len(LEGEND) + 2 * pad), height), "white")
    pen = ImageDraw.Draw(sheet)
    pen.text((pad, pad // 2), heading, fill="black", font=font)
    x = pad
    for panel in panels:
        words, rows, current = panel.title.split(), [], ""
        for word in words:  # wrap the title to the panel's width
            if current and len(current) + 1 + len(word) > max(8, panel.image.shape[1] // 7):
                rows.append(current)
                current = word
            else:
                current = f"{current} {word}".strip()
        rows.append(current)
        for i, text in enumerate(rows[:title_lines]):
            pen.text((x, pad // 2 + line * (i + 1)), text, fill="black", font=font)
        sheet.paste(Image.fromarray(panel.image), (x, line * (title_lines + 1)))
        x += panel.image.shape[1] + pad
    pen.text((pad, height - line), LEGEND, fill="black", font=font)
    return sheet
