"""Loss curves of a run as a PNG, drawn with Pillow (no plotting library).

The curves are the losses of the accepted iterates (one point per iteration, as the progress
lines count them; line-search trials are left out, so that one overshooting step does not
flatten the picture), on a log10 axis: the total and each term that is on (content, style, tv).
A run of several scales gets a dashed line where each new scale starts.
"""
from __future__ import annotations

import json
import math
import os

from .atomic import atomic_write
from .errors import NstliteError

TERMS = ("total", "content", "style", "tv")
COLOURS = {"total": (20, 20, 20), "content": (31, 119, 180), "style": (214, 39, 40), "tv": (44, 160, 44)}
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 28, 40


def read_log(path) -> list[dict]:
    """The evaluation records of a ``--log`` file (header records skipped); one-line errors."""
    try:
        with open(os.fspath(path), encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as e:
        raise NstliteError(f"cannot read log {path}: {e.strerror}") from None
    try:
        records = [json.loads(line) for line in lines]
    except ValueError:
        raise NstliteError(f"{path} is not an nstlite log (JSON lines)") from None
    rows = [r for r in records if isinstance(r, dict) and r.get("kind") != "header" and "total" in r]
    if not rows:
        raise NstliteError(f"{path} has no evaluation records")
    return rows


def iterate_points(history: list[dict]) -> list[dict]:
    """The records of the accepted iterates (and each scale's start); all records of a log
    written before records were marked."""
    if not any("kind" in r for r in history):
        return list(history)
    return [r for r in history if r.get("kind") in ("start", "accepted")]


def loss_curve_image(history: list[dict], width: int = 720, height: int = 400, title: str = "losses"):
    """A PIL image of the loss curves of ``history`` (the ``StylizeResult.history`` or ``read_log``)."""
    from PIL import Image, ImageDraw

    points = iterate_points(history)
    terms = [t for t in TERMS if any(_positive(r.get(t)) for r in points)]
    values = [math.log10(r[t]) for r in points for t in terms if _positive(r.get(t))]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if not values:
        draw.text((MARGIN_LEFT, height // 2), "no finite positive losses to draw", fill="black")
        return image
    low, high = math.floor(min(values)), math.ceil(max(values))
    high = max(high, low + 1)
    box = (MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM)
    span = max(len(points) - 1, 1)

    def at(i, v):
        x = box[0] + (box[2] - box[0]) * i / span
        y = box[3] - (box[3] - box[1]) * (math.log10(v) - low) / (high - low)
        return x, y

    _axes(draw, box, low, high, len(points) - 1, title)
    _scale_marks(draw, box, points, span)
    for term in terms:
        line = [at(i, r[term]) for i, r in enumerate(points) if _positive(r.get(term))]
        if len(line) > 1:
            draw.line(line, fill=COLOURS[term], width=2)
        elif line:
            x, y = line[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=COLOURS[term])
    _legend(draw, box, terms)
    return image


def save_loss_curve(history: list[dict], path, title: str = "losses") -> str:
    """Write the loss curves of ``history`` to ``path`` (PNG) atomically. Returns the path."""
    image = loss_curve_image(history, title=title)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def loss_curve_path(output) -> str:
    """Where ``nstlite stylize`` puts the curves of ``output``: ``<stem>_losses.png`` beside it."""
    return os.path.splitext(os.fspath(output))[0] + "_losses.png"


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def _axes(draw, box, low, high, last_iteration, title):
    left, top, right, bottom = box
    step = max(1, (high - low + 5) // 6)  # at most about six labelled decades
    for decade in range(low, high + 1):
        y = bottom - (bottom - top) * (decade - low) / (high - low)
        draw.line((left, y, right, y), fill=(225, 225, 225))
        if (decade - low) % step == 0:
            draw.text((6, y - 6), f"1e{decade}", fill="black")
    draw.rectangle(box, outline="black")
    for k in range(5):
        i = round(last_iteration * k / 4)
        x = left + (right - left) * (i / last_iteration if last_iteration else 0)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 8, bottom + 8), str(i), fill="black")
    draw.text(((left + right) // 2 - 24, bottom + 22), "iteration", fill="black")
    draw.text((left, 8), title, fill="black")


def _scale_marks(draw, box, points, span):
    """Dashed vertical lines where a new scale starts."""
    for i in range(1, len(points)):
        if points[i].get("scale") != points[i - 1].get("scale"):
            x = box[0] + (box[2] - box[0]) * i / span
            for y in range(box[1], box[3], 8):
                draw.line((x, y, x, min(y + 4, box[3])), fill=(150, 150, 150))


def _legend(draw, box, terms):
    x, y = box[2] - 90, box[1] + 8
    for term in terms:
        draw.line((x, y + 6, x + 18, y + 6), fill=COLOURS[term], width=3)
        draw.text((x + 24, y), term, fill="black")
        y += 14
