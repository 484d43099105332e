"""Figures 1, 2 and 3 of Gatys, Ecker & Bethge (2015), each by one command, with the numbers
behind every panel.

Reference
---------
L. A. Gatys, A. S. Ecker, M. Bethge. *A Neural Algorithm of Artistic Style*. arXiv:1508.06576, 2015.

What each figure shows (and what we measure)
--------------------------------------------
Figure 1  Top row: the photograph reconstructed from white noise by the content loss alone
          (eq. 1) at conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 (panels a-e). Measured: PSNR and
          relative pixel error against the photograph, the PSNR of 4x4 block means (the coarse
          picture, without the finest detail), final content loss, and the relative feature
          error ||F^l - P^l|| / ||P^l|| (how far the optimiser got).
          Bottom row: the artwork's style reconstructed from white noise by the style loss alone
          (eq. 5) over conv1_1; conv1_1+conv2_1; ...; conv1_1...conv5_1 (panels a-e, w_l equal).
          Measured: E_l (eq. 4) at each of the five layers, whether or not it was optimised, the
          mean-colour error, and how much of the artwork's layout survives (correlation of the
          coarse luminance maps, ~0 when none does).
Figure 2  The photograph and its stylisations with each artwork: content at conv4_2, style at
          conv1_1...conv5_1 with w_l = 1/5, alpha/beta = 1e-3 (the paper uses 1e-3 for B-D and
          1e-4 for E-F).
Figure 3  Rows: style layer sets conv1_1 up to conv1_1...conv5_1; columns: alpha/beta = 1e-5,
          1e-4, 1e-3, 1e-2; content at conv4_2. Measured per panel: content loss, style loss,
          E_l per layer, PSNR against the photograph.

Every panel is one call of ``nstlite.stylize`` (one optimiser for all of them). ``alpha/beta``
is realised as ``content_weight = 1``, ``style_weight = beta/alpha`` (the convention of
``stylize``'s defaults, alpha = 1, beta = 1e3).

The objective is eq. (7) as written (``style_weight_scaling="paper"``), so the ratios are the
paper's; white noise is the paper code's (the mean pixel plus Gaussian noise of
``nstlite.problem.NOISE_SIGMA`` levels).

The panels are independent tasks of the sweep engine (``nstlite.cluster.DaskExecutor``: an
embedded local cluster or an existing Dask scheduler; ``nstlite.sweep.SerialExecutor``: one
after another in this process). Each starts from the same seeded white noise, so a panel's
result does not depend on where or in which order it ran (with the same BLAS threads per task).
"""
import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from .atomic import atomic_write
from .colors import luminance
from .errors import NstliteError

PAPER = "Gatys, Ecker & Bethge, A Neural Algorithm of Artistic Style, arXiv:1508.06576 (2015)"

# The five layers the paper's figures are built from, and its content layer for Figures 2 and 3.
PAPER_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER = "conv4_2"
# Figure 1 b-e and Figure 3 A-E: conv1_1, then conv1_1+conv2_1, ..., then all five.
STYLE_LAYER_SETS = tuple(PAPER_LAYERS[:k] for k in range(1, len(PAPER_LAYERS) + 1))
FIGURE2_RATIO = 1e-3
FIGURE3_RATIOS = (1e-5, 1e-4, 1e-3, 1e-2)

# Defaults sized for a 2-core CPU; the timings quoted in --help were measured with them.
DEFAULTS = {
    1: {"size": 128, "iterations": 200},
    2: {"size": 128, "iterations": 150},
    3: {"size": 96, "iterations": 100},
}
HELP_TIMES = {  # measured with the defaults, two panels at once, on a shared 2-core CPU (docs/figures.md)
    1: "about 4 minutes with 2 workers (217 s measured)",
    2: "about 1 minute per style with 2 workers (4 styles: 219 s measured)",
    3: "about 6 minutes with 2 workers (345 s measured)",
}

LETTERS = "abcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------- panels
@dataclass(frozen=True)
class Panel:
    """One optimisation of a figure: what to match, and where its picture goes in the grid.

    ``content`` and ``styles`` name images in the figure's image table (``"photo"``,
    ``"style0"``...). ``ratio`` is alpha/beta where both terms are used, else None.
    """

    key: str
    caption: str
    row: int
    col: int
    kind: str  # "content" (Fig. 1 top), "style" (Fig. 1 bottom), "transfer" (Figs. 2 and 3)
    content: str
    styles: tuple = ()
    content_layers: tuple = ()
    style_layers: tuple = ()
    content_weight: float = 0.0
    style_weight: float = 0.0
    ratio: float = None


@dataclass(frozen=True)
class Shown:
    """An input image shown in the grid as it is (no optimisation)."""

    key: str
    caption: str
    row: int
    col: int
    image: str


@dataclass(frozen=True)
class Settings:
    """What every panel of one figure shares."""

    size: int
    iterations: int
    seed: int = 0
    weights: str = None
    pooling: str = "avg"
    device: str = "cpu"
    tv_weight: float = 0.0
    init: str = "noise"  # the paper code's white noise: the mean pixel plus Gaussian noise
    style_weight_scaling: str = "paper"  # eq. (7) as written: the paper's alpha/beta ratios


def layer_set_name(layers):
    """('conv1_1',) -> 'conv1_1'; ('conv1_1', ..., 'conv3_1') -> 'conv1_1...conv3_1'."""
    return layers[0] if len(layers) == 1 else f"{layers[0]}\u2026{layers[-1]}"


def figure1_panels(layers=PAPER_LAYERS):
    """Figure 1: inputs in column 0; content reconstructions (row 0) and style reconstructions
    from growing layer sets (row 1) in columns 1.. (panels a-e)."""
    items = [Shown("photo", "photograph", 0, 0, "photo"), Shown("artwork", "artwork", 1, 0, "style0")]
    for i, layer in enumerate(layers):
        items.append(Panel(f"content_{layer}", f"{LETTERS[i]} {layer}", 0, i + 1, "content", "photo",
                           content_layers=(layer,), content_weight=1.0))
    for i in range(len(layers)):
        subset = tuple(layers[: i + 1])
        # The style image itself plays "content" with weight 0: it sets the size and nothing else.
        items.append(Panel(f"style_{subset[-1]}", f"{LETTERS[i]} {layer_set_name(subset)}", 1, i + 1,
                           "style", "style0", styles=("style0",), style_layers=subset, style_weight=1.0))
    return items


def figure2_panels(style_names, ratio=FIGURE2_RATIO, style_layers=PAPER_LAYERS, columns=3):
    """Figure 2: the photograph (A) then one stylisation per artwork (B, C, ...), ``columns``
    to a row."""
    ratios = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio] * len(style_names)
    if len(ratios) != len(style_names):
        raise NstliteError(f"{len(ratios)} ratios for {len(style_names)} styles; give one, or one per style")
    items = [Shown("photo", "A photograph", 0, 0, "photo")]
    for i, (name, r) in enumerate(zip(style_names, ratios)):
        pos = i + 1
        items.append(Panel(f"style{i}", f"{LETTERS[pos].upper()} {name}", pos // columns, pos % columns,
                           "transfer", "photo", styles=(f"style{i}",), content_layers=(CONTENT_LAYER,),
                           style_layers=tuple(style_layers), content_weight=1.0, style_weight=1.0 / float(r),
                           ratio=float(r)))
    return items


def figure3_panels(ratios=FIGURE3_RATIOS, layer_sets=STYLE_LAYER_SETS):
    """Figure 3: rows A-E = style layer sets, columns 1-4 = alpha/beta ratios."""
    items = []
    for r, subset in enumerate(layer_sets):
        for c, ratio in enumerate(ratios):
            items.append(Panel(f"{LETTERS[r].upper()}{c + 1}", f"{LETTERS[r].upper()}{c + 1}", r, c,
                               "transfer", "photo", styles=("style0",), content_layers=(CONTENT_LAYER,),
                               style_layers=tuple(subset), content_weight=1.0, style_weight=1.0 / float(ratio),
                               ratio=float(ratio)))
    return items


# --------------------------------------------------------------------------- measures
def psnr(a, b, peak=255.0):
    """Peak signal-to-noise ratio in dB of two uint8 images of the same shape (inf if equal)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise NstliteError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def block_mean(rgb, k):
    """An H x W x C image averaged over k x k blocks (edges that do not fill a block dropped)."""
    a = np.asarray(rgb, np.float64)
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def psnr_coarse(a, b, k=4, peak=255.0):
    """PSNR of the two images' k x k block means: how well the coarse picture (layout, shapes,
    colours) is reproduced, whatever happens to the finest pixel detail."""
    return psnr(block_mean(a, k), block_mean(b, k), peak)


def relative_error(x, ref):
    """||x - ref|| / ||ref|| (Frobenius norms, computed in float64)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / denom) if denom > 0 else math.inf


def layout_correlation(a, b, cells=8):
    """Pearson correlation of the two images' luminance averaged over a grid of about
    ``cells`` x ``cells`` blocks: near 1 when the coarse layout is the same, near 0 when it is
    not (a texture without the original arrangement). The images must have the same shape."""
    la, lb = luminance(np.asarray(a, np.float64)), luminance(np.asarray(b, np.float64))
    h, w = la.shape
    bh, bw = max(1, h // cells), max(1, w // cells)
    h2, w2 = (h // bh) * bh, (w // bw) * bw
    ca = la[:h2, :w2].reshape(h2 // bh, bh, w2 // bw, bw).mean(axis=(1, 3)).ravel()
    cb = lb[:h2, :w2].reshape(h2 // bh, bh, w2 // bw, bw).mean(axis=(1, 3)).ravel()
    ca, cb = ca - ca.mean(), cb - cb.mean()
    denom = np.sqrt((ca @ ca) * (cb @ cb))
    return float(ca @ cb / denom) if denom > 0 else 0.0


def mean_colour_error(a, b):
    """Euclidean distance between the images' mean RGB colours (0..255 units)."""
    ma = np.asarray(a, np.float64).reshape(-1, 3).mean(axis=0)
    mb = np.asarray(b, np.float64).reshape(-1, 3).mean(axis=0)
    return float(np.linalg.norm(ma - mb))


def _style_errors(net, image, artwork, layers):
    """E_l (eq. 4) of ``image`` against ``artwork`` (same size) at each layer, as floats."""
    from . import losses
    from .backend import scalar

    feats_art = net.forward(net.preprocess(artwork), layers)
    grams = {name: losses.gram(feats_art[name]) for name in layers}  # A^l, eq. (3)
    feats = net.forward(net.preprocess(image), layers)
    return {name: scalar(losses.style_layer_loss(feats[name], grams[name])[0]) for name in layers}


def measure(panel, result, images, net):
    """The numbers behind one panel (a dict of floats/strings; see the module docstring)."""
    from .backend import scalar

    out = result.image
    final = dict(result.final)
    numbers = {"iterations": int(result.iterations), "evaluations": int(result.evaluations),
               "seconds": round(float(result.seconds), 3), "stop_reason": str(result.stop_reason)}
    for k in ("total", "content", "style", "tv"):
        if k in final:
            numbers[f"{k}_loss"] = float(final[k])
    numbers["style_errors"] = {k: float(v) for k, v in (final.get("style_layers") or {}).items()}  # E_l, eq. (4)
    content = _fit(images[panel.content], out.shape)
    if panel.kind in ("content", "transfer"):
        numbers["psnr"] = psnr(out, content)
        numbers["psnr_coarse"] = psnr_coarse(out, content)
        numbers["pixel_rel_error"] = relative_error(out, content)
    if panel.kind == "content":
        # ||F - P|| / ||P|| at the matched layer: sqrt(2 L_content) / ||P^l|| (eq. 1)
        layer = panel.content_layers[0]
        P = net.forward(net.preprocess(content), [layer])[layer]
        norm_p = math.sqrt(scalar((P * P).sum()))
        if history := getattr(result, "history", None):
            numbers["content_loss_initial"] = float(history[0]["content"])
        numbers["feature_rel_error"] = math.sqrt(2 * max(numbers.get("content_loss", 0.0), 0.0)) / norm_p \
            if norm_p > 0 else math.inf
    if panel.kind == "style":
        artwork = _fit(images[panel.styles[0]], out.shape)
        layers = [n for n in PAPER_LAYERS if n in net.layer_names]
        numbers["style_error_all_layers"] = _style_errors(net, out, artwork, layers)
        numbers["psnr_vs_artwork"] = psnr(out, artwork)
        numbers["layout_correlation"] = layout_correlation(out, artwork)
        numbers["mean_colour_error"] = mean_colour_error(out, artwork)
    if panel.kind == "content":
        numbers["layout_correlation"] = layout_correlation(out, content)
    return numbers


def _fit(rgb, shape):
    """``rgb`` resized (Lanczos) to ``shape[:2]`` if it is not that size already."""
    if rgb.shape[:2] == tuple(shape[:2]):
        return rgb
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.LANCZOS))


# --------------------------------------------------------------------------- running panels
def _net_for(settings):
    """This thread's VGG19 for the settings (``nstlite.sweep.task_network``): loaded once per
    worker thread from that worker's own weights file, never sent with a panel."""
    from .sweep import task_network

    return task_network(settings.weights, settings.pooling, settings.device)


def weights_source(path=None):
    """Where a weights file's weights came from: its ``source`` attribute (``nstlite.weights``),
    or None when the file has none. ``VGG19`` keeps only the preprocessing attributes."""
    from .weights import VGG19_CONV_LAYERS, read_weights

    _, attrs = read_weights(path, last=VGG19_CONV_LAYERS[0], mapped=True)  # one small layer read
    return attrs.get("source")


def run_panel(panel, images, settings):
    """Optimise one panel with ``nstlite.stylize``; returns {'key', 'image', 'numbers'}."""
    from .style_transfer import stylize

    net = _net_for(settings)
    styles = [images[s] for s in panel.styles]
    kwargs = dict(size=settings.size, iterations=settings.iterations, content_weight=panel.content_weight,
                  style_weight=panel.style_weight, init=settings.init, seed=settings.seed,
                  pooling=settings.pooling, tv_weight=settings.tv_weight, weights=settings.weights,
                  net=net, device=settings.device, quiet=True, style_weight_scaling=settings.style_weight_scaling)
    if panel.content_layers:
        kwargs["content_layers"] = panel.content_layers
    if panel.style_layers:
        kwargs["style_layers"] = panel.style_layers
    result = stylize(images[panel.content], styles, **kwargs)
    return {"key": panel.key, "image": np.asarray(result.image), "numbers": measure(panel, result, images, net)}


def panel_task(panel, images, settings, blas_threads=None):
    """What a worker runs for one panel (a top-level function of plain arguments, so that any
    Dask worker can import and run it): ``run_panel`` with ``blas_threads`` BLAS threads for
    this thread, plus where it ran and its seconds (the whole task: optimisation and measures)."""
    from .fast.workspace import local_blas_threads
    from .sweep import worker_name

    started = time.perf_counter()
    set_local = local_blas_threads() if blas_threads else None
    previous = set_local(int(blas_threads)) if set_local else None
    try:
        result = run_panel(panel, images, settings)
    finally:
        if set_local:
            set_local(previous)
    result["numbers"].update(worker=worker_name(), task_seconds=round(time.perf_counter() - started, 3),
                             blas_threads=int(blas_threads) if blas_threads else "default")
    return result


def run_panels(panels, images, settings, engine=None, progress=None):
    """Run every panel on ``engine``: a started ``nstlite.cluster.DaskExecutor``, or a
    ``nstlite.sweep.SerialExecutor`` (the default: one after another in this process). Returns
    {key: result dict}. ``progress(done, total, panel, result)`` is called as panels finish.

    A panel whose workers keep dying, or that fails on a worker, is a one-line ``NstliteError``
    (the panels not yet finished are cancelled): a figure needs every panel.
    """
    from .cluster import failure_reason
    from .sweep import SerialExecutor

    engine = engine or SerialExecutor()
    results, total = {}, len(panels)
    # Panels that reach deeper layers take longer: send those first so the workers finish together.
    order = sorted(panels, key=_cost, reverse=True) if total > 1 else list(panels)
    calls = ((p, _images_for(p, images), settings, engine.blas_threads) for p in order)
    try:
        for (panel, *_), outcome in engine.map(panel_task, calls, name=lambda args: f"panel-{args[0].key}"):
            if isinstance(outcome, NstliteError):
                raise NstliteError(f"panel {panel.key}: {outcome}")
            if isinstance(outcome, BaseException):
                reason = failure_reason(outcome, getattr(engine, "retries", 0))
                hint = "; try a smaller --size or fewer --workers" if type(outcome).__name__ == "KilledWorker" else ""
                raise NstliteError(f"panel {panel.key} failed: {reason}{hint}")
            results[panel.key] = outcome
            if progress:
                progress(len(results), total, panel, outcome)
    except BaseException:
        engine.cancel()
        raise
    return results


def _images_for(panel, images):
    """Only the images a panel needs (they travel with its task: a rerun elsewhere has them)."""
    return {k: images[k] for k in {panel.content, *panel.styles}}


def _cost(panel):
    from .vgg import VGG19_LAYERS

    layers = panel.content_layers + panel.style_layers
    return max(VGG19_LAYERS.index(n) for n in layers) if layers else 0


# --------------------------------------------------------------------------- grid rendering
def _font(size):
    """Pillow's built-in font at ``size`` px (Pillow >= 10.1); the fixed bitmap font otherwise."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _wrap(draw, text, font, width):
    """Greedy word wrap of ``text`` to lines no wider than ``width`` px (where words allow)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = word if not line else f"{line} {word}"
            if line and _text_size(draw, trial, font)[0] > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _fitting_font_size(draw, words, width, size):
    """``size``, shrunk (down to 7 px) until every word fits in ``width`` - 2 px."""
    while size > 7 and words and max(_text_size(draw, w, _font(size))[0] for w in words) > width - 2:
        size -= 1
    return size


def render_grid(cells, title=None, row_labels=None, col_labels=None, font_size=None, background=(255, 255, 255),
                text_colour=(0, 0, 0)):
    """One labelled grid image.

    cells : dict (row, col) -> (H x W x 3 uint8 image, caption). Images may differ in size;
        each is centred in a cell as large as the largest.
    title : text above the grid; row_labels / col_labels : texts left of each row / above each column.
    Returns (grid, boxes): grid an H x W x 3 uint8 array; boxes maps (row, col) -> {'image':
    [x0, y0, x1, y1], 'caption': [x0, y0, x1, y1]}, where each was drawn (x1, y1 exclusive).
    """
    from PIL import Image, ImageDraw

    if not cells:
        raise NstliteError("nothing to draw")
    n_rows = max(r for r, _ in cells) + 1
    n_cols = max(c for _, c in cells) + 1
    cell_w = max(img.shape[1] for img, _ in cells.values())
    cell_h = max(img.shape[0] for img, _ in cells.values())
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    words = [w for _, cap in cells.values() for w in (cap or "").split()]
    words += [w for t in (col_labels or []) for w in t.split()]
    fs = _fitting_font_size(scratch, words, cell_w, font_size or max(10, min(24, cell_w // 11)))
    font, pad = _font(fs), max(3, fs // 3)
    line_h = _text_size(scratch, "Ag\u2026", font)[1] + pad

    def block_height(texts, width):
        return max((len(_wrap(scratch, t, font, width)) for t in texts if t), default=0) * line_h

    caption_h = block_height([cap for _, cap in cells.values()], cell_w) + pad
    row_labels = list(row_labels or [])
    label_w = 0
    if row_labels:
        label_w = min(max(_text_size(scratch, t, font)[0] for t in row_labels) + 2 * pad, 2 * cell_w)
    col_h = block_height(col_labels or [], cell_w) + (pad if col_labels else 0)
    title_h = (block_height([title], n_cols * cell_w) + pad) if title else 0
    width = label_w + n_cols * (cell_w + pad) + pad
    height = title_h + col_h + n_rows * (cell_h + caption_h + pad) + pad
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)

    def write(lines, x0, y0, w, centred=True):
        for k, line in enumerate(lines):
            tw = _text_size(draw, line, font)[0]
            x = x0 + (w - tw) // 2 if centred else x0
            draw.text((x, y0 + k * line_h), line, font=font, fill=text_colour)

    if title:
        write(_wrap(draw, title, font, width - 2 * pad), pad, pad // 2, width - 2 * pad)
    top = title_h + col_h
    for c, text in enumerate(col_labels or []):
        x0 = label_w + pad + c * (cell_w + pad)
        write(_wrap(draw, text, font, cell_w), x0, title_h, cell_w)
    for r, text in enumerate(row_labels):
        y0 = top + pad + r * (cell_h + caption_h + pad)
        lines = _wrap(draw, text, font, label_w - pad)
        write(lines, pad // 2, y0 + (cell_h - len(lines) * line_h) // 2, label_w - pad, centred=False)
    boxes = {}
    for (r, c), (img, caption) in cells.items():
        x0 = label_w + pad + c * (cell_w + pad)
        y0 = top + pad + r * (cell_h + caption_h + pad)
        h, w = img.shape[:2]
        ix, iy = x0 + (cell_w - w) // 2, y0 + (cell_h - h) // 2
        canvas.paste(Image.fromarray(np.ascontiguousarray(img[..., :3])), (ix, iy))
        if caption:
            write(_wrap(draw, caption, font, cell_w), x0, y0 + cell_h + pad // 2, cell_w)
        boxes[(r, c)] = {"image": [ix, iy, ix + w, iy + h],
                         "caption": [x0, y0 + cell_h, x0 + cell_w, y0 + cell_h + caption_h]}
    return np.asarray(canvas), boxes


def with_inset(img, inset, fraction=0.3, border=2):
    """``img`` with a thumbnail of ``inset`` in its lower-left corner (the paper's Figure 2 style)."""
    from PIL import Image

    h, w = img.shape[:2]
    tw = max(4, int(round(w * fraction)))
    th = max(4, int(round(inset.shape[0] * tw / inset.shape[1])))
    th = min(th, h - 2 * border)
    thumb = np.asarray(Image.fromarray(inset).resize((tw, th), Image.LANCZOS))
    out = np.array(img, copy=True)
    out[h - th - 2 * border:h, 0:tw + 2 * border] = 255
    out[h - th - border:h - border, border:tw + border] = thumb
    return out


# --------------------------------------------------------------------------- output files
def _write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically (temp file in the same folder + os.replace)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def _json_value(v):
    """JSON-safe: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


CSV_COLUMNS = ("figure", "panel", "caption", "row", "col", "kind", "ratio", "content_layers", "style_layers",
               "iterations", "evaluations", "seconds", "stop_reason", "total_loss", "content_loss", "style_loss",
               "psnr", "psnr_coarse", "pixel_rel_error", "feature_rel_error", "layout_correlation", "mean_colour_error",
               "psnr_vs_artwork") + tuple(f"E_{n}" for n in PAPER_LAYERS) + ("task_seconds", "worker", "blas_threads")


def panel_records(figure, panels, results):
    """One flat dict per panel: its definition and its numbers."""
    records = []
    for p in panels:
        numbers = results[p.key]["numbers"]
        rec = {"figure": figure, "panel": p.key, "caption": p.caption, "row": p.row, "col": p.col, "kind": p.kind,
               "ratio": p.ratio, "content_layers": list(p.content_layers), "style_layers": list(p.style_layers),
               "content_weight": p.content_weight, "style_weight": p.style_weight}
        rec.update(numbers)
        records.append(rec)
    return records


def write_csv(path, records):
    """The per-panel numbers as CSV (one row per panel; E_<layer> is E_l, eq. 4, where known)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records:
        row = {k: rec.get(k) for k in CSV_COLUMNS}
        row["content_layers"] = ";".join(rec["content_layers"])
        row["style_layers"] = ";".join(rec["style_layers"])
        # E_l at all five layers where measured (Fig. 1 style panels), else at the optimised ones
        per_layer = rec.get("style_error_all_layers") or rec.get("style_errors") or {}
        for n in PAPER_LAYERS:
            if n in per_layer:
                row[f"E_{n}"] = per_layer[n]
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = "" if not math.isfinite(v) else f"{v:.6g}"
            elif v is None:
                row[k] = ""
        writer.writerow(row)
    _write_text(path, buf.getvalue())


def write_json(path, document):
    """``document`` as indented JSON (non-finite numbers written as null), atomically."""
    _write_text(path, json.dumps(_json_value(document), indent=2) + "\n")


def sidecar_paths(output):
    """fig.png -> (fig.json, fig.csv)."""
    stem = os.path.splitext(output)[0]
    return stem + ".json", stem + ".csv"


# --------------------------------------------------------------------------- the three figures
def load_inputs(content, styles, size):
    """The photograph and the artworks as H x W x 3 uint8 arrays, longest side ``size``:
    {'photo': ..., 'style0': ..., 'style1': ...}. Every panel gets these very arrays."""
    from .image import load_image, resize_longest, to_uint8

    table = {"photo": to_uint8(resize_longest(load_image(content, "content image"), size).rgb)}
    for i, path in enumerate(styles):
        table[f"style{i}"] = to_uint8(resize_longest(load_image(path, "style image"), size).rgb)
    return table


def check_outputs(output, inputs, overwrite=False):
    """Fail before any work if the output cannot be written or would replace something: an
    unknown extension, a missing folder, an existing file (without ``overwrite``) or an input."""
    from .image import output_format

    output_format(output)
    paths = (output,) + sidecar_paths(output)
    for p in paths:
        for src in inputs:
            if os.path.exists(p) and os.path.exists(src) and os.path.samefile(p, src):
                raise NstliteError(f"output {p} is one of the input images; choose another --output")
        if os.path.exists(p) and not overwrite:
            raise NstliteError(f"{p} exists; pass --overwrite to replace it, or choose another --output")
    return paths


def figure_checks(figure, records, ratios=None):
    """The paper's measurable claims, evaluated on this run's numbers."""
    checks = {}
    if figure == 1:
        content = [r for r in records if r["kind"] == "content"]
        ps = [r["psnr"] for r in content]
        checks["content_psnr_db"] = {r["content_layers"][0]: r["psnr"] for r in content}
        checks["content_psnr_coarse_db"] = {r["content_layers"][0]: r["psnr_coarse"] for r in content}
        checks["content_psnr_decreases_with_depth"] = all(a > b for a, b in zip(ps, ps[1:]))
        if len(ps) >= 3:
            checks["content_psnr_min_of_first_three_db"] = min(ps[:3])
        style = [r for r in records if r["kind"] == "style"]
        checks["style_layout_correlation"] = {r["panel"]: r["layout_correlation"] for r in style}
        checks["style_mean_colour_error"] = {r["panel"]: r["mean_colour_error"] for r in style}
    elif figure == 2:
        checks["content_psnr_db"] = {r["caption"]: r["psnr"] for r in records}
    elif figure == 3:
        rows = {}
        for rec in records:
            rows.setdefault(layer_set_name(rec["style_layers"]), []).append((rec["ratio"], rec["content_loss"]))
        falls = {}
        for name, pairs in rows.items():
            losses_by_ratio = [c for _, c in sorted(pairs)]
            falls[name] = all(a > b for a, b in zip(losses_by_ratio, losses_by_ratio[1:]))
        checks["content_loss_by_ratio"] = {name: {f"{r:.0e}": c for r, c in sorted(pairs)}
                                           for name, pairs in rows.items()}
        checks["content_loss_falls_as_ratio_grows"] = falls
        checks["content_loss_falls_in_every_row"] = all(falls.values())
    return checks


def _grid_for(figure, items, images, results, settings, ratios):
    """The labelled grid of one figure: (H x W x 3 uint8 array, boxes), see ``render_grid``."""
    cells = {}
    for it in items:
        if isinstance(it, Shown):
            cells[(it.row, it.col)] = (images[it.image], it.caption)
            continue
        img, numbers = results[it.key]["image"], results[it.key]["numbers"]
        caption = it.caption
        if it.kind == "content":
            caption += f"\n{numbers['psnr']:.1f} dB"
        if figure == 2:
            img = with_inset(img, images[it.styles[0]])
        cells[(it.row, it.col)] = (img, caption)
    common = f"{settings.size} px, {settings.iterations} iterations, seed {settings.seed}"
    if figure == 1:
        return render_grid(cells, title=f"Figure 1: reconstructions from white noise ({common})",
                           row_labels=["content", "style"])
    if figure == 2:
        ratio_text = ", ".join(sorted({f"{p.ratio:.0e}" for p in items if isinstance(p, Panel)}))
        return render_grid(cells, title=f"Figure 2: content conv4_2, style conv1_1\u2026conv5_1, "
                                        f"alpha/beta {ratio_text} ({common})")
    n_rows = max(p.row for p in items) + 1
    row_labels = [layer_set_name(next(p.style_layers for p in items if p.row == r)) for r in range(n_rows)]
    return render_grid(cells, title=f"Figure 3: style layers (rows) x alpha/beta (columns) ({common})",
                       row_labels=row_labels, col_labels=[f"alpha/beta {r:.0e}" for r in ratios])


def make_figure(figure, content, styles, output, settings, engine=None, ratios=None, layers=PAPER_LAYERS,
                overwrite=False, command=None, log=None):
    """Build Figure ``figure`` (1, 2 or 3): run its panels, write the grid to ``output`` and the
    numbers to the same stem with ``.json`` and ``.csv``. Returns the JSON document (a dict).

    content : photograph path; styles : artwork paths (one for Figures 1 and 3);
    engine : where the panels run, not yet started: a ``nstlite.cluster.DaskExecutor`` (see
        ``count_panels`` for its plan), or the default ``nstlite.sweep.SerialExecutor()`` (this process);
    ratios : alpha/beta values (Figure 2: one, or one per style; Figure 3: the columns);
    layers : the layers the figure is built from (default conv1_1, conv2_1, ..., conv5_1).
    """
    from .image import save_image
    from .sweep import SerialExecutor

    styles, layers = list(styles), tuple(layers)
    engine = engine or SerialExecutor()
    _check_request(figure, styles, settings, layers)
    check_outputs(output, [content] + styles, overwrite)
    if settings.weights and os.path.exists(settings.weights):
        settings = replace(settings, weights=os.path.abspath(settings.weights))  # workers may run elsewhere
    started = time.perf_counter()
    net = _net_for(settings)  # a missing or bad weights file fails here, before any work
    missing = [n for n in set(layers) | {CONTENT_LAYER} if n not in net.layer_names]
    if missing:
        raise NstliteError(f"layer(s) {', '.join(sorted(missing))} not in this network; "
                           f"use names from {', '.join(n for n in net.layer_names if n.startswith('conv'))}")
    images = load_inputs(content, styles, settings.size)
    items, ratios = figure_items(figure, styles, ratios, layers)
    panels = [p for p in items if isinstance(p, Panel)]

    def progress(done, total, panel, result):
        if log:
            n = result["numbers"]
            extra = f", PSNR {n['psnr']:.2f} dB" if "psnr" in n else ""
            log(f"[{done}/{total}] {panel.key}: {n['iterations']} iterations, {n['seconds']:.1f} s{extra} "
                f"on {n['worker']}")

    if log:
        log(f"figure {figure}: {len(panels)} panels at {settings.size} px, {settings.iterations} iterations")
    with engine:
        if log:
            log(f"figure {figure}: panels run on {engine.description}")
        results = run_panels(panels, images, settings, engine=engine, progress=progress)
        engine_record = engine.record()
    grid, boxes = _grid_for(figure, items, images, results, settings, ratios)
    records = panel_records(figure, panels, results)
    for rec in records:  # where each panel sits in the grid image, to crop it out
        rec["box"] = boxes[(rec["row"], rec["col"])]["image"]
    document = _document(figure, command, output, content, styles, images, settings, engine_record, ratios, layers,
                         records, time.perf_counter() - started)
    json_path, csv_path = sidecar_paths(output)
    save_image(output, grid)
    write_csv(csv_path, records)
    write_json(json_path, document)
    return document


def count_panels(figure, styles, ratios=None, layers=PAPER_LAYERS):
    """How many panels Figure ``figure`` optimises (to plan the workers before it starts)."""
    items, _ = figure_items(figure, list(styles), ratios, tuple(layers))
    return sum(isinstance(p, Panel) for p in items)


def _check_request(figure, styles, settings, layers):
    """One-line errors for a figure request that cannot run, before anything is read."""
    if figure in (1, 3) and len(styles) != 1:
        raise NstliteError(f"figure {figure} takes exactly one style image, got {len(styles)}")
    if figure == 2 and not styles:
        raise NstliteError("figure 2 needs at least one style image")
    if settings.size < 16:
        raise NstliteError(f"--size {settings.size} is too small: VGG19 needs at least 16 px")
    if settings.iterations < 1:
        raise NstliteError("--iterations must be at least 1")
    if not layers:
        raise NstliteError("no layers given")


def figure_items(figure, styles, ratios, layers):
    """(grid items, the alpha/beta ratios used) of Figure ``figure`` for these style paths."""
    if figure == 1:
        return figure1_panels(layers), ratios
    if figure == 2:
        ratios = list(ratios) if ratios else [FIGURE2_RATIO]
        if len(ratios) == 1:
            ratios = ratios * len(styles)
        names = [os.path.splitext(os.path.basename(s))[0] for s in styles]
        items = figure2_panels(names, ratios, style_layers=layers)
    else:
        ratios = list(ratios) if ratios else list(FIGURE3_RATIOS)
        items = figure3_panels(ratios, tuple(layers[:k] for k in range(1, len(layers) + 1)))
    if any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise NstliteError("alpha/beta ratios must be positive numbers")
    return items, ratios


def _document(figure, command, output, content, styles, images, settings, engine, ratios, layers, records, wall):
    """The JSON document of a figure run: inputs, settings (with the weights' source), the
    engine that ran the panels (each panel's record says its worker and seconds), numbers."""
    from . import __version__
    from .weights import default_weights_path

    return {
        "figure": figure,
        "paper": PAPER,
        "command": command,
        "output": output,
        "inputs": {"content": content, "styles": styles},
        "input_sizes": {k: list(v.shape[:2]) for k, v in images.items()},
        "settings": dict(asdict(settings), ratios=ratios, layers=list(layers),
                         weights=settings.weights or default_weights_path(),
                         weights_source=weights_source(settings.weights)),
        "engine": engine,
        "nstlite_version": __version__,
        "wall_seconds": round(wall, 2),
        "panels": records,
        "checks": figure_checks(figure, records, ratios),
    }
