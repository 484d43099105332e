"""Sweeps and batches: many ``stylize`` runs as independent tasks, with a results table.

A *task* is one call of ``nstlite.stylize``: a content image, its style image(s) and the
keywords that differ from the defaults. This module builds the task list and runs it; it needs
no Dask:

- ``sweep_tasks`` takes the Cartesian product of option values (``grid``), of several content
  images and of several style sets, validates every task before any runs, and names each
  task's output from the settings that vary;
- ``batch_tasks`` takes every photo of a folder (or a list) with each style, the same options;
- ``run_task`` is what a worker runs: the image bytes in, the result image and one record of
  numbers out (a failure is a record with a one-line reason, never an exception);
- ``execute`` skips the tasks already done in the output folder (resume), hands the others to
  an executor (``SerialExecutor`` here, ``nstlite.cluster.DaskExecutor`` for Dask), writes each
  output atomically as it arrives and keeps ``results.csv`` and ``results.json`` up to date.

Every task is deterministic given its settings and seed: the same task gives the same bits in
this process, in a local cluster and on a remote worker with the same BLAS.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields

from . import image as im
from .atomic import atomic_write
from .errors import NstliteError
from .options import StylizeOptions

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_FORMAT = "nstlite-sweep"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")

# stylize keywords a task cannot take: objects of this process, or per-run files and output
NOT_TASK_OPTIONS = ("net", "callback", "stream", "output", "log", "checkpoint_prefix", "resume", "save_every",
                    "quiet", "print_every", "preview")
TASK_OPTIONS = tuple(f.name for f in fields(StylizeOptions) if f.name not in NOT_TASK_OPTIONS)
# options whose one value is itself a comma list: their grid values are separated by ';'
LIST_OPTIONS = ("content_layers", "style_layers", "style_blend_weights", "scales", "style_loss", "iterations")
_FIELD_TYPES = {f.name: str(f.type) for f in fields(StylizeOptions)}


@dataclass
class Task:
    """One ``stylize`` run of a sweep or batch.

    name : the output's file stem (unique in the sweep); content : path of the photograph;
    styles : paths of its style images; settings : the ``stylize`` keywords of this task (the
    fixed ones and its grid values); axes : the values of the axes that vary, by name, for the
    results table; output : the image path to write.
    """

    name: str
    content: str
    styles: list
    settings: dict
    axes: dict = field(default_factory=dict)
    output: str = ""

    def key(self, file_digest: Callable[[str], str]) -> str:
        """A digest of everything that decides the result: the settings and the input files
        (``file_digest(path)``). A finished task with the same key is not run again."""
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for path in [self.content] + list(self.styles):
            h.update(file_digest(path).encode())
        return h.hexdigest()[:20]


# --------------------------------------------------------------------------- option values
def option_name(text: str) -> str:
    """``style-weight`` / ``style_weight`` -> ``style_weight``; a one-line error for a name
    that is not a ``stylize`` option a task can take."""
    name = text.strip().replace("-", "_")
    if name not in TASK_OPTIONS:
        raise NstliteError(f"unknown option {text.strip()!r} for a sweep; use a stylize option such as style_weight, "
                           f"style_layers, size, iterations, init, seed (not {', '.join(NOT_TASK_OPTIONS)})")
    return name


def convert_value(name: str, value):
    """A value as given (text from the command line, or a number/bool/list from a file) in the
    type of that ``StylizeOptions`` field; a one-line error naming the option otherwise."""
    if not isinstance(value, str):
        return value
    kind = _FIELD_TYPES[name]
    text = value.strip()
    if name in LIST_OPTIONS and "," in text:
        return text  # a list (e.g. iterations per scale), read by the options' own parser
    if "None" in kind and text.lower() in ("none", "default"):
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        what = {"bool": "true/false", "int": "whole number", "float": "number"}[kind.split(" ")[0]]
        raise NstliteError(f"{name} must be a {what}, not {value!r}") from None
    return text


def parse_grid(items: Iterable[str]) -> dict:
    """``["style_weight=1e2,1e3", "style_layers=conv1_1;conv1_1,conv2_1"]`` -> dict name ->
    list of values (text). Values are separated by commas, except for the options whose one
    value is a comma list (``LIST_OPTIONS``: layers, scales, blend weights, style loss), whose
    values are separated by ';' (layer lists also by ':' where no weight is written).
    Repeating an option adds values to its axis."""
    grid: dict = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        if not sep:
            raise NstliteError(f"write a grid axis as OPTION=V1,V2,... (e.g. style_weight=1e3,1e4); not {item!r}")
        name = option_name(name)
        values = [v.strip() for v in text.split(_separator(name, text)) if v.strip()]
        if not values:
            raise NstliteError(f"grid axis {name} has no values")
        grid.setdefault(name, []).extend(values)
    return grid


def _separator(name, text):
    """',' between values; ';' for list options. A layer axis may also separate its values by
    ':' when no part is a weight (``conv1_1:conv1_1,conv2_1``; ``conv1_1:0.2`` is a weight)."""
    if name not in LIST_OPTIONS:
        return ","
    if name in ("content_layers", "style_layers") and ";" not in text and ":" in text \
            and all(part.strip()[:1].isalpha() for part in text.split(":")):
        return ":"
    return ";"


def parse_settings(items: Iterable[str]) -> dict:
    """``["init=noise", "size=256"]`` -> dict of fixed options (text values)."""
    out = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        if not sep:
            raise NstliteError(f"write a setting as OPTION=VALUE (e.g. init=noise); not {item!r}")
        out[option_name(name)] = text.strip()
    return out


def read_sweep_file(path) -> dict:
    """A sweep described in TOML or JSON (by extension): ``content`` (a path or list),
    ``style`` (a list; an entry may be a list of paths, blended in one task), ``options``
    (fixed stylize options), ``grid`` (option -> list of values) and optionally ``out_dir``.
    Relative image paths are read relative to the file's folder."""
    path = im.check_input_file(path, "sweep file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                raise NstliteError("a TOML sweep file needs Python 3.11 or later; write it as JSON") from None
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        elif ext == ".json":
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        else:
            raise NstliteError(f"sweep file {path}: write it as .toml or .json")
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise NstliteError(f"sweep file {path} cannot be read: {e}".splitlines()[0]) from None
    if not isinstance(doc, dict):
        raise NstliteError(f"sweep file {path}: expected a table/object at the top")
    unknown = sorted(set(doc) - {"content", "style", "options", "grid", "out_dir"})
    if unknown:
        raise NstliteError(f"sweep file {path}: unknown key(s) {', '.join(unknown)}; "
                           "use content, style, options, grid, out_dir")
    folder = os.path.dirname(os.path.abspath(path))

    def here(p):
        p = os.path.expanduser(p)
        return p if os.path.isabs(p) else os.path.join(folder, p)

    contents = doc.get("content", [])
    contents = [contents] if isinstance(contents, str) else list(contents)
    styles = [[here(p) for p in ([s] if isinstance(s, str) else s)] for s in doc.get("style", [])]
    options = {option_name(k): v for k, v in dict(doc.get("options", {})).items()}
    grid = {}
    for k, v in dict(doc.get("grid", {})).items():
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        if not values:
            raise NstliteError(f"grid axis {k} has no values")
        grid[option_name(k)] = values
    out_dir = doc.get("out_dir")
    return {"content": [here(c) for c in contents], "style": styles, "options": options, "grid": grid,
            "out_dir": here(out_dir) if out_dir else None}


# --------------------------------------------------------------------------- tasks
def sweep_tasks(contents: Sequence, styles: Sequence, fixed: dict, grid: dict, out_dir, ext: str = ".png",
                check_files: bool = True) -> list[Task]:
    """The Cartesian product content x style set x grid values, each task validated.

    Parameters
    ----------
    contents : photograph paths (an axis when several)
    styles : style sets: each a path or a list of paths blended in one task (an axis when
        several); ``[]`` for no style term
    fixed : stylize options for every task (values as text or typed)
    grid : option -> list of values (the axes)
    out_dir : folder of the outputs; ext : their image format (".png", ".jpg"...)
    check_files : check that every image exists before any task runs (a batch checks its
        photos as it goes instead)

    Raises
    ------
    NstliteError
        (one line) for an unknown option, an empty axis, a value that fails validation or a
        missing file, before any task runs.
    """
    contents = [os.fspath(c) for c in contents]
    style_sets = [[os.fspath(p) for p in ([s] if isinstance(s, (str, os.PathLike)) else s)] for s in styles] or [[]]
    if not contents:
        raise NstliteError("give at least one content image")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise NstliteError(f"{both[0]} is both a fixed option and a grid axis; give it once")
    for name, values in grid.items():
        if not list(values):
            raise NstliteError(f"grid axis {name} has no values")
    fixed = {option_name(k): convert_value(option_name(k), v) for k, v in fixed.items()}
    if isinstance(fixed.get("weights"), (str, os.PathLike)) and os.path.exists(fixed["weights"]):
        fixed["weights"] = os.path.abspath(fixed["weights"])  # workers may run in another folder
    im.output_format("x" + ext)
    if check_files:
        _check_files(contents, style_sets)
    names = list(grid)
    tasks = []
    for content, style_set, values in itertools.product(contents, style_sets, itertools.product(*grid.values())):
        settings = dict(fixed)
        settings.update({n: convert_value(n, v) for n, v in zip(names, values)})
        axes = dict(zip(names, values))
        tasks.append(Task(name="", content=content, styles=list(style_set), settings=settings, axes=axes))
    _name_tasks(tasks, len(contents) > 1 or len(style_sets) > 1, os.fspath(out_dir), ext)
    for task in tasks:
        check_task(task)
    return tasks


def batch_tasks(photos: Sequence, styles: Sequence, fixed: dict, out_dir, ext: str = ".png") -> list[Task]:
    """Every photo with each style set, the same options: a sweep without a grid whose
    photos are checked when their task runs (a missing or corrupt photo fails that task only)."""
    if not photos:
        raise NstliteError("no photos to process")
    _check_files([], [[os.fspath(p) for p in ([s] if isinstance(s, (str, os.PathLike)) else s)] for s in styles])
    return sweep_tasks(photos, styles, fixed, {}, out_dir, ext, check_files=False)


def photos_in(sources: Sequence) -> list[str]:
    """Photo paths from folders (their image files, sorted, not recursive), list files (one
    path per line, ``#`` comments; relative to the list's folder) and image paths."""
    photos = []
    for source in sources:
        source = os.fspath(source)
        if os.path.isdir(source):
            found = sorted(os.path.join(source, n) for n in os.listdir(source)
                           if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith("."))
            if not found:
                raise NstliteError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
            photos += found
        elif source.lower().endswith((".txt", ".lst", ".list")):
            folder = os.path.dirname(os.path.abspath(im.check_input_file(source, "photo list")))
            with open(source, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            photos += [ln if os.path.isabs(ln) else os.path.join(folder, ln) for ln in lines]
        else:
            photos.append(source)
    return photos


def check_task(task: Task) -> None:
    """Validate a task's options as ``stylize`` will (no image is read); the error names the task."""
    from .vgg import VGG19_LAYERS

    try:
        opts = StylizeOptions.from_keywords(task.settings).validated(len(task.styles))
        unknown = [n for n in opts.loss_layers if n not in VGG19_LAYERS]
        if unknown:
            raise NstliteError(f"unknown layer(s) {', '.join(unknown)}; use VGG19 names such as conv1_1, conv4_2")
    except NstliteError as e:
        hint = "" if not set(task.axes) & set(LIST_OPTIONS) else " (separate the values of a layer or number " \
                                                                  "list axis with ';')"
        raise NstliteError(f"task {task.name}: {e}{hint}") from None
    except (TypeError, ValueError) as e:
        raise NstliteError(f"task {task.name}: {e}") from None


def _check_files(contents, style_sets):
    for c in contents:
        im.check_input_file(c, "content image")
    for s in {p for group in style_sets for p in group}:
        im.check_input_file(s, "style image")


def _value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_value_text(v) for v in value)
    return str(value)


def _safe(text: str) -> str:
    """A file-name part: commas become '+', anything unusual '-'."""
    text = text.replace(",", "+").replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", text).strip("-.") or "x"


def _name_tasks(tasks, name_inputs, out_dir, ext):
    """Each task's name from its content and style stems and its axis values, made unique."""
    seen: dict = {}
    for task in tasks:
        parts = [_safe(os.path.splitext(os.path.basename(task.content))[0])]
        if name_inputs or task.styles:
            parts.append("+".join(_safe(os.path.splitext(os.path.basename(s))[0]) for s in task.styles) or "nostyle")
        parts += [f"{n}={_safe(_value_text(v))}" for n, v in task.axes.items()]
        name = "__".join(parts)
        if len(name) > 150:  # keep file names readable and within limits
            name = name[:130] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        seen[name] = seen.get(name, 0) + 1
        task.name = name if seen[name] == 1 else f"{name}-{seen[name]}"
        task.output = os.path.join(out_dir, task.name + ext)


# --------------------------------------------------------------------------- what a worker runs
_local = threading.local()  # per worker thread: the networks it has loaded (one workspace each)


def task_network(weights, pooling: str = "avg", device: str = "cpu"):
    """The VGG19 this thread has loaded for ``(weights, pooling, device)``, loaded on first use:
    the weights are read once per worker thread, never sent with a task. One network per
    thread because a network's workspace is scratch for one evaluation at a time."""
    from .vgg import load_vgg19
    from .weights import default_weights_path

    path = os.path.abspath(os.path.expanduser(os.fspath(weights))) if weights else default_weights_path()
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None  # load_vgg19 says what is missing
    cache = getattr(_local, "nets", None)
    if cache is None:
        cache = _local.nets = {}
    key = (path, stamp, pooling, device)
    if key not in cache:
        cache.clear()  # one network per thread
        cache[key] = load_vgg19(path, pooling=pooling, device=device)
    return cache[key]


def decode_image(data: bytes, path: str, what: str):
    """Image bytes -> a decoded PIL image; a one-line error naming ``path`` when they are not one."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise NstliteError(f"{what} {path} is missing or empty")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise NstliteError(f"{what} {path} cannot be read as an image ({e})".splitlines()[0]) from None


def run_task(task: Task, content: bytes, styles: Sequence[bytes], blas_threads: int | None = None) -> dict:
    """Run one task (on a worker, or in this process): ``stylize`` on the decoded bytes with the
    task's settings and ``blas_threads`` BLAS threads for this thread. Returns a record dict
    with the result ``image`` (uint8) - the caller writes it - or a one-line ``reason``."""
    from .fast.workspace import local_blas_threads, transform_threads
    from .style_transfer import stylize

    started = time.perf_counter()
    record = {"name": task.name, "worker": worker_name(), "blas_threads": _blas_text(blas_threads),
              "transform_threads": transform_threads()}
    set_local = local_blas_threads() if blas_threads else None
    previous = set_local(int(blas_threads)) if set_local else None
    try:
        settings = dict(task.settings)
        net = task_network(settings.pop("weights", None), settings.pop("pooling", "avg"),
                           settings.pop("device", "cpu"))
        photo = decode_image(content, task.content, "content image")
        arts = [decode_image(b, p, "style image") for b, p in zip(styles, task.styles)]
        result = stylize(photo, arts, net=net, quiet=True, **settings)
    except NstliteError as e:
        return dict(record, status="failed", reason=" ".join(str(e).split()), seconds=time.perf_counter() - started)
    except MemoryError:
        return dict(record, status="failed", reason="out of memory", seconds=time.perf_counter() - started)
    finally:
        if set_local:
            set_local(previous)
    final = result.final
    return dict(record, status="ok", reason="", image=result.image, total=final.get("total"),
                content_loss=final.get("content"), style_loss=final.get("style"), tv_loss=final.get("tv"),
                iterations=result.iterations, evaluations=result.evaluations,
                stop_reason=str(result.stop_reason), seconds=result.seconds)


def worker_name():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local:{socket.gethostname()}:{os.getpid()}"


def _blas_text(blas_threads):
    if blas_threads:
        return int(blas_threads)
    return os.environ.get("OPENBLAS_NUM_THREADS", "default")


# --------------------------------------------------------------------------- executors
class SerialExecutor:
    """Runs the tasks one after another in this process (the reference for the others)."""

    description = "serial, in this process"

    def __init__(self, blas_threads: int | None = None):
        self.blas_threads = blas_threads

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc):
        return False

    def record(self) -> dict:
        """What ran the tasks, for a results file."""
        return {"kind": "serial", "description": self.description, "workers": 1, "threads_per_worker": [1],
                "blas_threads": _blas_text(self.blas_threads)}

    def run(self, tasks: Sequence[Task], read: Callable[[str], bytes]) -> Iterator[tuple]:
        """Yield ``(task, record)`` as each task finishes."""
        for task in tasks:
            yield task, run_task(task, *_inputs(task, read), blas_threads=self.blas_threads)

    def map(self, fn: Callable, calls: Iterable[tuple], name: Callable[[tuple], str] = str) -> Iterator[tuple]:
        """Yield ``(args, fn(*args))`` one call after another (``DaskExecutor.map`` in this
        process; what a call raises propagates, as nothing could rerun it elsewhere)."""
        for args in calls:
            yield args, fn(*args)

    def running(self) -> int:
        return 0

    def cancel(self) -> None:
        pass


def _inputs(task, read):
    """(content bytes, [style bytes]); a missing photo becomes a failure of its task."""
    return read(task.content), [read(s) for s in task.styles]


def read_input(path: str) -> bytes:
    """An input file's bytes; a missing file becomes empty bytes, which fail to decode with a
    one-line reason in the task's record (a batch goes on)."""
    try:
        return open(path, "rb").read()
    except OSError:
        return b""


# --------------------------------------------------------------------------- execute
@dataclass
class SweepReport:
    """What ``execute`` did: one record per task (in task order) and the counts."""

    records: list
    ran: int
    skipped: int
    failed: int
    seconds: float
    results_json: str
    results_csv: str


def execute(tasks: Sequence[Task], out_dir, executor=None, progress: Callable[[str], None] | None = None,
            resume: bool = True, command: str | None = None) -> SweepReport:
    """Run ``tasks`` with ``executor`` (default ``SerialExecutor()``), writing each output
    atomically and ``results.json`` / ``results.csv`` in ``out_dir``.

    With ``resume`` a task whose record in an earlier ``results.json`` there has the same key
    (settings and input bytes) and status ok, and whose output exists, is not run again.
    Ctrl-C cancels the tasks not yet finished, writes the results so far and re-raises.
    """
    started = time.perf_counter()
    executor = executor or SerialExecutor()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    digests: dict = {}  # path -> digest of its bytes (a style shared by many tasks is read once)

    def file_digest(path):
        if path not in digests:
            digests[path] = hashlib.sha256(read_input(path)).hexdigest()
        return digests[path]

    keys = {t.name: t.key(file_digest) for t in tasks}
    done = previous_records(out_dir) if resume else {}
    records = {}
    for t in tasks:
        old = done.get(keys[t.name])
        if old is not None and os.path.exists(t.output):
            records[t.name] = dict(old, resumed=True)
    todo = [t for t in tasks if t.name not in records]
    tracker = _Progress(len(tasks), len(records), progress, executor)
    ledger = _Ledger(out_dir, tasks, records, keys, command, executor.description)
    try:
        for task, record in executor.run(todo, read_input):
            records[task.name] = _finish(task, record, keys[task.name])
            tracker.finished(task, records[task.name])
            ledger.write(final=False)
    except KeyboardInterrupt:
        executor.cancel()
        ledger.write(final=True)
        raise
    ledger.write(final=True)
    ordered = [records[t.name] for t in tasks if t.name in records]
    failed = sum(r["status"] != "ok" for r in ordered)
    return SweepReport(ordered, ran=len(todo), skipped=len(tasks) - len(todo), failed=failed,
                       seconds=time.perf_counter() - started, results_json=ledger.json_path,
                       results_csv=ledger.csv_path)


def run_sweep(contents, styles, grid: dict, out_dir, options: dict | None = None, scheduler: str | None = None,
              workers: int | None = None, blas_threads: int | None = None, serial: bool = False,
              resume: bool = True, progress: Callable[[str], None] | None = None) -> SweepReport:
    """A whole sweep in one call: ``sweep_tasks`` then ``execute`` on Dask (``scheduler``, or an
    embedded cluster of ``workers``) or, with ``serial``, in this process.

    Example: ``run_sweep(["photo.jpg"], ["art.jpg"], {"style_weight": [1e3, 1e4]}, "runs",
    {"size": 256})``. The other parameters are those of ``sweep_tasks``, ``execute`` and
    ``nstlite.cluster.plan_workers``.
    """
    tasks = sweep_tasks(contents, styles, options or {}, grid, out_dir)
    if serial:
        executor = SerialExecutor(blas_threads)
    else:
        from .cluster import DaskExecutor, plan_workers

        plan = plan_workers(len(tasks), workers=workers, blas_threads=blas_threads or (1 if scheduler else None))
        executor = DaskExecutor(scheduler, plan, say=progress)
    with executor:
        return execute(tasks, out_dir, executor, progress=progress, resume=resume)


def _finish(task, record, key):
    """Write the task's image (atomically) and complete its record."""
    record = dict(record)
    image = record.pop("image", None)
    if record.get("status") == "ok" and image is not None:
        try:
            im.save_image(task.output, image[..., :3], image[..., 3] if image.shape[2] == 4 else None,
                          jpeg_quality=task.settings.get("jpeg_quality", im.JPEG_QUALITY))
        except NstliteError as e:
            record.update(status="failed", reason=str(e))
    record.update(key=key, content=task.content, styles=list(task.styles), axes=dict(task.axes),
                  settings=dict(task.settings), output=task.output if record.get("status") == "ok" else "")
    return record


def previous_records(out_dir) -> dict:
    """key -> record of the finished tasks in ``out_dir/results.json`` (empty if none)."""
    path = os.path.join(os.fspath(out_dir), RESULTS_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        return {}
    return {r["key"]: r for r in doc.get("tasks", []) if isinstance(r, dict) and r.get("status") == "ok"
            and r.get("key")}


CSV_LOSSES = ("status", "total", "content_loss", "style_loss", "tv_loss", "iterations", "evaluations", "seconds",
              "worker", "blas_threads", "output", "reason")


class _Ledger:
    """results.json and results.csv, rewritten atomically (at most every few seconds while
    tasks arrive, so that a long sweep does not spend its time writing tables)."""

    def __init__(self, out_dir, tasks, records, keys, command, engine):
        self.json_path = os.path.join(out_dir, RESULTS_JSON)
        self.csv_path = os.path.join(out_dir, RESULTS_CSV)
        self.tasks, self.records, self.keys = tasks, records, keys
        self.header = {"format": RESULTS_FORMAT, "command": command, "engine": engine}
        self.last = 0.0

    def write(self, final):
        now = time.monotonic()
        if not final and now - self.last < 2.0:
            return
        self.last = now
        rows = [self.records[t.name] for t in self.tasks if t.name in self.records]
        doc = dict(self.header, tasks_total=len(self.tasks), tasks_done=len(rows), tasks=rows)
        text = json.dumps(doc, indent=1, default=_json_default)
        atomic_write(self.json_path, lambda tmp: open(tmp, "w", encoding="utf-8").write(text + "\n"))
        axes = list(dict.fromkeys(n for t in self.tasks for n in t.axes))
        columns = ["name", "content", "styles"] + axes + list(CSV_LOSSES)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            cells = dict(r, styles=";".join(r.get("styles", [])), **{a: r.get("axes", {}).get(a, "") for a in axes})
            writer.writerow([_cell(cells.get(c, "")) for c in columns])
        atomic_write(self.csv_path, lambda tmp: open(tmp, "w", encoding="utf-8").write(buffer.getvalue()))


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _json_default(value):
    try:
        return value.item()  # NumPy scalars
    except AttributeError:
        return str(value)


class _Progress:
    """One line per finished task: done / running / failed of the whole sweep and an ETA from
    the mean task time and the tasks running at once."""

    def __init__(self, total, skipped, say, executor):
        self.total, self.done, self.failed, self.say, self.executor = total, skipped, 0, say, executor
        self.started = time.perf_counter()
        self.ran = 0
        if say and skipped:
            say(f"sweep: {skipped} of {total} tasks already done in this folder (skipped)")

    def finished(self, task, record):
        self.done += 1
        self.ran += 1
        self.failed += record["status"] != "ok"
        if not self.say:
            return
        elapsed = time.perf_counter() - self.started
        left = self.total - self.done
        eta = f", ETA {_duration(elapsed / self.ran * left)}" if left else ""
        what = f"{record.get('seconds', 0):.1f} s on {record.get('worker', '?')}" if record["status"] == "ok" \
            else f"FAILED: {record.get('reason', '')}"
        self.say(f"sweep: [{self.done}/{self.total}] {task.name}: {what}  (in flight {self.executor.running()}, "
                 f"failed {self.failed}{eta})")


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
