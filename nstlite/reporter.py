"""Everything a ``stylize`` run tells the outside world, in one object.

``Reporter`` receives the optimiser's two hooks (after every evaluation, after every iteration)
and turns them into

* progress: on a terminal one bar line redrawn in place (carriage return); elsewhere (a pipe, a
  file, a notebook) a compact line every ``print_every`` iterations; both with rate and ETA, and
  only the loss terms that are on;
* the JSON-lines log: a header record (``run_header``: settings, inputs with sizes and sha256,
  versions, weights file, machine), then one record per evaluation marked ``start``, ``trial``
  (a line-search step L-BFGS-B did not keep) or ``accepted`` (the iterate of that iteration);
* checkpoints every ``save_every`` iterations, announced, carrying the run's fingerprint
  (``nstlite.checkpoint.run_fingerprint``) so that ``resume`` refuses a checkpoint made from
  other inputs or settings; a checkpoint that cannot be written is announced and skipped;
* a preview image rewritten every ``print_every`` iterations (``preview``; every 10 when 0);
* the user's ``callback(info)``, whose True return stops the run.

The ETA is (iterations left) x (evaluations per iteration) x (seconds per evaluation). The
first evaluation of a scale pays for warm-up (plans, caches) and the first iteration takes
several line-search steps, so neither is extrapolated: seconds per evaluation is the median
of the latest evaluations after the first, and evaluations per iteration is measured after the
first iteration, starting from L-BFGS-B's usual one per iteration.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from statistics import median

import numpy as np

from . import image as im
from .checkpoint import Checkpoint, checkpoint_stem, save_checkpoint
from .errors import NstliteError
from .options import DEFAULT_PRINT_EVERY, StylizeOptions
from .paths import file_kind, shown

LOG_FORMAT = "nstlite-log"
LOG_VERSION = 2
RECENT_EVALUATIONS = 25      # the ETA's seconds per evaluation: median of this many latest
PRIOR_ITERATIONS = 2         # pseudo-iterations at one evaluation each that start the ratio
BAR_WIDTH = 24
BAR_REDRAW_SECONDS = 0.1

# Options that say nothing about the run or cannot be written down.
UNRECORDED_OPTIONS = ("net", "callback", "stream", "quiet", "print_every")


def format_duration(seconds: float) -> str:
    """42 -> '42s', 125 -> '2m05s', 7300 -> '2h01m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def format_rate(iterations_per_second: float) -> str:
    """2.5 -> '2.50 it/s'; 0.25 -> '4.0 s/it' (a slow run reads better in seconds per iteration)."""
    if iterations_per_second >= 1 or iterations_per_second <= 0:
        return f"{iterations_per_second:.2f} it/s"
    return f"{1 / iterations_per_second:.1f} s/it"


# --------------------------------------------------------------------------- run records
def file_record(path) -> dict:
    """``{"path", "bytes", "sha256"}`` of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.fspath(path), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()}


def input_record(source) -> dict:
    """What identifies one input image: a file's record, or an array's shape and sha256."""
    if isinstance(source, (str, os.PathLike)):
        return file_record(source)
    a = np.ascontiguousarray(np.asarray(source))
    return {"array": list(a.shape), "dtype": str(a.dtype), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return input_record(value)
    return type(value).__name__  # a PIL image, a network: named, not recorded


def run_header(opts: StylizeOptions, content, styles) -> dict:
    """The record a run's log starts with and its checkpoints carry.

    opts : validated options; content, styles : the inputs as ``stylize`` got them (paths or
    arrays; region styles already in ``styles``). Hashes every input file and the weights file.
    """
    from . import __version__
    from .weights import default_weights_path

    options = {name: _jsonable(getattr(opts, name)) for name in opts.__dataclass_fields__
               if name not in UNRECORDED_OPTIONS}
    inputs = {"content": input_record(content), "styles": [input_record(s) for s in styles]}
    if isinstance(opts.init, (str, os.PathLike)) and os.path.isfile(opts.init):
        inputs["init"] = file_record(opts.init)
    weights = None
    if opts.net is None:
        path = opts.weights if opts.weights is not None else default_weights_path()
        weights = file_record(path) if os.path.isfile(path) else {"path": os.fspath(path)}
    return {"kind": "header", "format": LOG_FORMAT, "version": LOG_VERSION, "nstlite": __version__,
            "command": shlex.join(["nstlite"] + sys.argv[1:]) if _from_command_line() else None,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": options, "inputs": inputs, "weights": weights, "machine": _machine(opts.device)}


def _from_command_line() -> bool:
    """Run as ``nstlite`` or ``python -m nstlite`` (not from a library caller or a test runner)."""
    program = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return os.path.basename(program) == "nstlite" or (
        os.path.basename(program) == "__main__.py" and os.path.basename(os.path.dirname(program)) == "nstlite")


def _machine(device: str) -> dict:
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "platform": platform.platform(), "cpus": os.cpu_count(), "device": device}


# --------------------------------------------------------------------------- the ETA
class EtaClock:
    """Times one scale's evaluations and iterations for the ETA (see the module docstring)."""

    def __init__(self, started: float):
        self.last_time = started
        self.durations: list[float] = []       # seconds of each evaluation after the first
        self.evaluations = 0                   # of this scale
        self.after_first = None                # evaluations done when iteration 1 ended

    def evaluation_done(self, now: float) -> None:
        if self.evaluations:
            self.durations.append(now - self.last_time)
        self.last_time, self.evaluations = now, self.evaluations + 1

    def iteration_done(self) -> None:
        if self.after_first is None:
            self.after_first = self.evaluations

    def eta(self, done: int, left: int, elapsed: float) -> float:
        """Seconds for ``left`` more iterations after ``done`` of this scale."""
        if not self.durations or self.after_first is None:
            return left * elapsed / max(done, 1)
        per_evaluation = median(self.durations[-RECENT_EVALUATIONS:])
        later = self.evaluations - self.after_first       # evaluations of iterations 2..done
        per_iteration = (later + PRIOR_ITERATIONS) / (done - 1 + PRIOR_ITERATIONS)
        return left * per_iteration * per_evaluation


# --------------------------------------------------------------------------- the reporter
class Reporter:
    """Progress, the log, checkpoints, preview and the callback of one run (see the module docstring).

    opts : validated ``StylizeOptions``; started : ``time.perf_counter()`` at the start of the
    run (the log's ``seconds`` count from it); append_log : continue an existing log (resuming);
    header : ``run_header`` of the run (the log's first record, stored in checkpoints).
    Use as a context manager, so that the log is closed whatever happens.
    """

    def __init__(self, opts: StylizeOptions, started: float, append_log: bool = False, header: dict | None = None):
        self.opts = opts
        self.stream = sys.stderr if opts.stream is None else opts.stream
        self.bar = _is_terminal(self.stream)
        self.bar_open, self.bar_drawn, self.bar_width = False, 0.0, 0
        self.started, self.header = started, header
        self.history, self.checkpoints = [], []
        self.evaluation_offset = 0     # evaluations of earlier scales (and of a resumed run)
        self.last = {}                 # the latest evaluation's record
        self.pending = None            # the latest record, written once its kind is known
        self.problem, self.clock = None, EtaClock(started)
        self.fingerprint = None        # what the run is made of, stored in checkpoints
        self.log_error = None          # why the log stopped being written (a full disk ...)
        self.scale_started, self.first_iteration, self.todo = started, 0, 0
        self.log_file = _open_log(opts.log, append_log)
        if self.log_file is not None and header is not None:
            self._write(header)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._flush_pending()
        self._end_bar()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    @property
    def multi_scale(self) -> bool:
        return len(self.opts.scales) > 1

    @property
    def tag(self) -> str:
        """The prefix of a scale's lines in a run of several scales: ``[512x384 2/2] ``."""
        if not self.multi_scale or self.problem is None:
            return ""
        h, w = self.problem.shape[1:]
        return f"[{w}x{h} {self.problem.index + 1}/{len(self.opts.scales)}] "

    def say(self, message: str) -> None:
        if not self.opts.quiet:
            self._end_bar()
            print(message, file=self.stream, flush=True)

    # ----------------------------------------------------------------- one scale
    def begin_scale(self, problem, first_iteration: int, todo: int, estimate=None) -> None:
        """Announce a scale: ``todo`` iterations after ``first_iteration`` (> 0 when resuming)."""
        self.problem, self.first_iteration, self.todo = problem, first_iteration, todo
        self.scale_started = time.perf_counter()
        self.clock = EtaClock(self.scale_started)
        o = self.opts
        h, w = problem.shape[1:]
        init = o.init if isinstance(o.init, str) else "array"
        where = " GPU" if getattr(getattr(problem, "net", None), "device", "cpu") != "cpu" else ""
        memory = f", ~{estimate / 2**30:.2f} GiB{where} peak estimate" if estimate else ""
        tv = f" tv={o.tv_weight:g}" if o.tv_weight else ""
        tile = getattr(problem.objective, "tile", None)  # a TiledObjective's
        tiles = f", by {tile} px tiles (margin {problem.objective.margin})" if tile else ""
        self.say(f"{self.tag}stylizing {w}x{h}: {todo} iterations, {problem.style_count} style image(s), "
                 f"alpha={o.content_weight:g} beta={o.style_weight:g}{tv}, init={init}{tiles}{memory}")

    def end_scale(self, evaluations: int) -> None:
        self._flush_pending()
        self._end_bar()
        self.evaluation_offset += evaluations

    def on_evaluation(self, iteration: int, evaluation: int, loss: float, info: dict) -> None:
        """The optimiser's hook after every evaluation: one history record and log line.

        ``iteration`` (iterations completed) becomes the iteration the evaluation belongs to,
        the number the progress shows once it completes; the scale's first evaluation is its
        ``start``.
        """
        self._flush_pending()
        now = time.perf_counter()
        start = self.clock.evaluations == 0
        self.clock.evaluation_done(now)
        record = {"iteration": iteration if start else iteration + 1, "kind": "start" if start else "trial",
                  "evaluation": evaluation + self.evaluation_offset, "seconds": round(now - self.started, 4), **info}
        if self.multi_scale:
            record["scale"] = self.problem.size
        self.history.append(record)
        self.last = self.pending = record

    def _write_log(self, line):
        """One log line; a failed write (a full disk) stops the log, not the run, and is said once."""
        try:
            self.log_file.write(line)
            self.log_file.flush()
        except OSError as e:
            self.log_error = f"cannot write log {shown(self.opts.log)}: {e.strerror or e}"
            try:
                self.log_file.close()
            except OSError:
                pass
            self.log_file = None
            self.say(f"nstlite: warning: {self.log_error}; the run goes on without it")

    def on_iteration(self, iteration: int, evaluation: int, x_flat) -> bool:
        """The optimiser's hook after every iteration; True stops the run (the callback said so)."""
        if self.pending is not None:
            self.pending["kind"] = "accepted"  # L-BFGS-B's iterate is the point it evaluated last
            self._flush_pending()
        self.clock.iteration_done()
        self._progress(iteration, evaluation)
        every = self.opts.print_every or DEFAULT_PRINT_EVERY  # a preview even without progress lines
        if self.opts.preview is not None and iteration % every == 0:
            self._write_image(self.opts.preview, x_flat)
        if self.opts.save_every and iteration % self.opts.save_every == 0:
            self._save_checkpoint(iteration, evaluation, x_flat)
        if self.opts.callback is None:
            return False
        x = np.array(x_flat).reshape(self.problem.shape)  # the caller's copy: the optimiser's own x moves on
        return bool(self.opts.callback({
            "iteration": iteration, "evaluation": evaluation + self.evaluation_offset, "scale": self.problem.size,
            "size": tuple(self.problem.shape[1:]), "x": x, "image": self.problem.image(x),
            "losses": dict(self.last)}))

    # ----------------------------------------------------------------- progress
    def _progress(self, iteration, evaluation):
        done, end = iteration - self.first_iteration, self.first_iteration + self.todo
        every = self.opts.print_every
        if not every or self.opts.quiet:
            return
        now = time.perf_counter()
        elapsed = now - self.scale_started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = self.clock.eta(done, self.todo - done, elapsed) if done > 0 else 0.0
        if self.bar:
            if iteration == end or done == 1 or now - self.bar_drawn >= BAR_REDRAW_SECONDS:
                self._draw_bar(iteration, end, done, rate, eta)
                self.bar_drawn = now
        elif iteration % every == 0 or iteration == end or done == 1:
            print(f"{self.tag}it {iteration}/{end}  {self._losses(self.last, 3)}  {format_rate(rate)}  "
                  f"ETA {format_duration(eta)}", file=self.stream, flush=True)

    def _losses(self, losses, digits):
        """``total 1.23e+05  content ...  style ...`` with tv only when it is on."""
        names = ("total", "content", "style") + (("tv",) if self.opts.tv_weight else ())
        nan = float("nan")
        return "  ".join(f"{name} {losses.get(name, nan):.{digits}e}" for name in names)

    def _draw_bar(self, iteration, end, done, rate, eta):
        fraction = done / self.todo if self.todo else 1.0
        filled = int(round(BAR_WIDTH * fraction))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        # ETA first: a narrow terminal cuts the losses, not the time
        text = f"{self.tag}[{bar}] {iteration}/{end}  {format_rate(rate)}  ETA {format_duration(eta)}  " \
               f"{self._losses(self.last, 2)}"
        text = text[:shutil.get_terminal_size((100, 20)).columns - 1]
        self.stream.write("\r" + text.ljust(self.bar_width))
        self.stream.flush()
        self.bar_open, self.bar_width = True, len(text)

    def _end_bar(self):
        """Close the bar's line, so that the next message starts on its own."""
        if self.bar_open:
            self.stream.write("\n")
            self.stream.flush()
            self.bar_open, self.bar_width = False, 0

    # ----------------------------------------------------------------- files
    def _write(self, record):
        if self.log_file is not None:
            self._write_log(json.dumps(record) + "\n")

    def _flush_pending(self):
        if self.pending is not None:
            self._write(self.pending)
            self.pending = None

    def _write_image(self, path, x_flat):
        image = self.problem.image(x_flat.reshape(self.problem.shape))
        im.save_image(path, image[..., :3], image[..., 3] if image.shape[2] == 4 else None,
                      jpeg_quality=self.opts.jpeg_quality)

    def _save_checkpoint(self, iteration, evaluation, x_flat):
        x = x_flat.reshape(self.problem.shape)
        stem = checkpoint_stem(self.opts.checkpoint_prefix, iteration, self.problem.size, self.multi_scale)
        picture = stem + self.opts.checkpoint_ext
        try:
            self._write_image(picture, x_flat)
            save_checkpoint(stem + ".npz", Checkpoint(x=x, iteration=iteration,
                                                      evaluations=evaluation + self.evaluation_offset,
                                                      scale_index=self.problem.index, size=self.problem.size,
                                                      fingerprint=self.fingerprint))
        except (OSError, NstliteError) as e:  # a full disk: the run goes on, the output is still written
            self.say(f"nstlite: warning: checkpoint {shown(stem)} not written ({e})")
            return
        self.checkpoints.extend([picture, stem + ".npz"])
        self.say(f"{self.tag}checkpoint at iteration {iteration}: {stem}.npz and {picture}")

    # ----------------------------------------------------------------- the end
    def summary(self, result) -> None:
        """The closing lines: counts and time, final losses, the file written."""
        self.say(f"done: {result.iterations} iterations, {result.evaluations} evaluations in "
                 f"{format_duration(result.seconds)} ({result.stop_reason})")
        self.say(f"final losses: {self._losses(result.final, 4)}")
        if result.log_error:
            self.say(f"note: {result.log_error}; the log is incomplete")
        if result.output:
            image = result.image
            mode = "RGBA" if image.shape[2] == 4 else "RGB"
            self.say(f"wrote {shown(result.output)} ({image.shape[1]}x{image.shape[0]} {mode})")


def _is_terminal(stream) -> bool:
    """A bar only on an interactive terminal that can move the cursor back."""
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _open_log(path, append):
    if path is None:
        return None
    kind = file_kind(path)
    if kind is not None:  # opening a FIFO blocks until a reader comes
        raise NstliteError(f"log {shown(path)} is {kind}, not a regular file")
    try:
        return open(os.fspath(path), "a" if append else "w", encoding="utf-8")
    except OSError as e:
        raise NstliteError(f"cannot open log file {shown(path)}: {e.strerror}") from None
