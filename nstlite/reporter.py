"""Everything a ``stylize`` run tells the outside world, in one object.

``Reporter`` receives the optimiser's two hooks (after every evaluation, after every iteration)
and turns them into

* progress lines (every ``print_every`` iterations, with rate and ETA) and the summary;
* the JSON-lines log (one object per evaluation, the ``history`` of the result);
* checkpoints every ``save_every`` iterations (``nstlite.checkpoint``);
* the user's ``callback(info)``, whose True return stops the run.
"""
import json
import os
import sys
import time

from . import image as im
from .checkpoint import Checkpoint, checkpoint_stem, save_checkpoint
from .errors import NstliteError
from .options import StylizeOptions
from .paths import file_kind, shown


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


class Reporter:
    """Progress lines, the log, checkpoints and the callback of one run (see the module docstring).

    opts : validated ``StylizeOptions``; started : ``time.perf_counter()`` at the start of the
    run (the log's ``seconds`` count from it); append_log : continue an existing log (resuming).
    Use as a context manager, so that the log is closed whatever happens.
    """

    def __init__(self, opts: StylizeOptions, started: float, append_log: bool = False):
        self.opts = opts
        self.stream = sys.stderr if opts.stream is None else opts.stream
        self.started = started
        self.history, self.checkpoints = [], []
        self.evaluation_offset = 0     # evaluations of earlier scales (and of a resumed run)
        self.last = {}                 # the latest evaluation's record
        self.problem = None
        self.fingerprint = None        # what the run is made of, stored in checkpoints
        self.log_error = None          # why the log stopped being written (a full disk ...)
        self.scale_started, self.first_iteration, self.todo = started, 0, 0
        self.log_file = _open_log(opts.log, append_log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
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
            print(message, file=self.stream, flush=True)

    # ----------------------------------------------------------------- one scale
    def begin_scale(self, problem, first_iteration: int, todo: int, estimate=None) -> None:
        """Announce a scale: ``todo`` iterations after ``first_iteration`` (> 0 when resuming)."""
        self.problem, self.first_iteration, self.todo = problem, first_iteration, todo
        self.scale_started = time.perf_counter()
        o = self.opts
        h, w = problem.shape[1:]
        init = o.init if isinstance(o.init, str) else "array"
        memory = f", ~{estimate / 2**30:.2f} GiB peak estimate" if estimate else ""
        self.say(f"{self.tag}stylizing {w}x{h}: {todo} iterations, {len(problem.style_rgbs)} style image(s), "
                 f"alpha={o.content_weight:g} beta={o.style_weight:g} tv={o.tv_weight:g}, init={init}{memory}")

    def end_scale(self, evaluations: int) -> None:
        self.evaluation_offset += evaluations

    def on_evaluation(self, iteration: int, evaluation: int, loss: float, info: dict) -> None:
        """The optimiser's hook after every evaluation: one history record and log line."""
        record = {"iteration": iteration, "evaluation": evaluation + self.evaluation_offset,
                  "seconds": round(time.perf_counter() - self.started, 4), **info}
        if self.multi_scale:
            record["scale"] = self.problem.size
        self.history.append(record)
        self.last = record
        if self.log_file is not None:
            self._write_log(json.dumps(record) + "\n")

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
        self._progress_line(iteration, evaluation)
        if self.opts.save_every and iteration % self.opts.save_every == 0:
            self._save_checkpoint(iteration, evaluation, x_flat)
        if self.opts.callback is None:
            return False
        x = x_flat.reshape(self.problem.shape)
        return bool(self.opts.callback({
            "iteration": iteration, "evaluation": evaluation + self.evaluation_offset, "scale": self.problem.size,
            "size": tuple(self.problem.shape[1:]), "x": x, "image": self.problem.image(x),
            "losses": dict(self.last)}))

    def _progress_line(self, iteration, evaluation):
        done, end = iteration - self.first_iteration, self.first_iteration + self.todo
        every = self.opts.print_every
        if not every or not (iteration % every == 0 or iteration == end or done == 1):
            return
        elapsed = time.perf_counter() - self.scale_started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.todo - done) / rate if rate > 0 else 0.0
        last = self.last
        self.say(f"{self.tag}it {iteration:>5}/{end}  evals {evaluation + self.evaluation_offset:>5}  "
                 f"total {last.get('total', 0):.4e}  content {last.get('content', 0):.3e}  "
                 f"style {last.get('style', 0):.3e}  tv {last.get('tv', 0):.3e}  "
                 f"{rate:.2f} it/s  ETA {format_duration(eta)}")

    def _save_checkpoint(self, iteration, evaluation, x_flat):
        x = x_flat.reshape(self.problem.shape)
        stem = checkpoint_stem(self.opts.checkpoint_prefix, iteration, self.problem.size, self.multi_scale)
        picture = stem + self.opts.checkpoint_ext
        image = self.problem.image(x)
        try:
            im.save_image(picture, image[..., :3], image[..., 3] if image.shape[2] == 4 else None)
            save_checkpoint(stem + ".npz", Checkpoint(x=x, iteration=iteration,
                                                      evaluations=evaluation + self.evaluation_offset,
                                                      scale_index=self.problem.index, size=self.problem.size,
                                                      fingerprint=self.fingerprint))
        except (OSError, NstliteError) as e:  # a full disk: the run goes on, the output is still written
            self.say(f"nstlite: warning: checkpoint {shown(stem)} not written ({e})")
            return
        self.checkpoints.extend([picture, stem + ".npz"])

    # ----------------------------------------------------------------- the end
    def summary(self, result) -> None:
        """The closing lines: counts and time, final losses, the file written."""
        final = result.final
        nan = float("nan")
        self.say(f"done: {result.iterations} iterations, {result.evaluations} evaluations in "
                 f"{format_duration(result.seconds)} ({result.stop_reason})")
        self.say(f"final losses: total {final.get('total', nan):.4e}  content {final.get('content', nan):.4e}  "
                 f"style {final.get('style', nan):.4e}  tv {final.get('tv', nan):.4e}")
        if result.log_error:
            self.say(f"note: {result.log_error}; the log is incomplete")
        if result.output:
            image = result.image
            mode = "RGBA" if image.shape[2] == 4 else "RGB"
            self.say(f"wrote {shown(result.output)} ({image.shape[1]}x{image.shape[0]} {mode})")


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
