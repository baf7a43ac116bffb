"""Progress for the waits outside the training loop: tokenizing, caching, counting a stream, training a
tokenizer, generating, predicting.

One helper, three ways to show a stage:

* ``rich``: in a terminal, a live bar with the description, M/N counts, the rate, elapsed and remaining
  time; when the stage ends the bar goes and its summary line stays;
* ``plain``: when output goes to a file, a pipe or a cluster log (not a terminal), nothing while the stage
  runs and exactly one line when it ends::

      tokenized train split (train.csv): 67,349 rows in 12.3 s (5,470 rows/s)

* ``off``: nothing at all, on every rank but global rank 0, inside DataLoader workers, and with
  ``LMFORGE_PROGRESS=off``.

``LMFORGE_PROGRESS=auto|rich|plain|off`` chooses (``auto``, the default: rich when stdout is a terminal,
the rule of the training progress bar ``callbacks.progress_bar.kind=auto``). A process started by
``multiprocessing`` that is not a distributed rank never draws a bar (plain lines only).

Use::

    with stage("tokenizing train split (train.csv)", total=len(rows), unit="rows") as s:
        for chunk in chunks:
            ...
            s.advance(len(chunk))        # or progress.advance(n): the innermost open stage of this thread

    for doc in track(stream, "counting documents in corpus.txt", unit="documents"):  # total unknown: fine
        ...

Code that does the work need not know whether anyone shows it: :func:`advance` moves the innermost stage
this thread opened with ``with stage(...)`` and does nothing when there is none (a task's tokenizing loop
advances the datamodule's stage). Counts may be fractions (a loop that makes two passes over the rows
advances by half a row per row and pass). Per item the cost is an addition; the bar is redrawn at most
ten times a second. Stages opened inside one another share one bar display; inside another live rich
display (Lightning's training bar) the stage's bar is drawn beneath it (rich >= 14; older rich: the
summary line only).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

MODES = ("auto", "rich", "plain", "off")
ENV = "LMFORGE_PROGRESS"
REFRESH_S = 0.1  # the bar is redrawn at most this often

# "tokenizing ..." ends as "tokenized ...": the first word of a description, in the past tense
PAST = {"tokenizing": "tokenized", "generating": "generated", "counting": "counted", "answering": "answered",
        "training": "trained", "packing": "packed", "building": "built", "reading": "read", "caching": "cached",
        "predicting": "predicted", "post-processing": "post-processed", "encoding": "encoded",
        "embedding": "embedded", "scoring": "scored", "writing": "wrote", "loading": "loaded", "carving": "carved"}

_local = threading.local()


# -- where we are ----------------------------------------------------------------------------------

def global_rank() -> int:
    """This process's global rank: torch.distributed's when initialised, else Lightning's ``rank_zero_only.rank``
    when Lightning is loaded, else ``RANK`` / ``SLURM_PROCID`` / ``LOCAL_RANK``, else 0. Imports nothing."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except Exception:  # noqa: BLE001  (a half-initialised process group: fall back to the environment)
        pass
    rz = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(rz, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return int(rank)
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def in_dataloader_worker() -> bool:
    data = sys.modules.get("torch.utils.data")
    try:
        return data is not None and data.get_worker_info() is not None
    except Exception:  # noqa: BLE001
        return False


def _distributed() -> bool:
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001
        return False


def _spawned_child() -> bool:
    """A process that ``multiprocessing`` started and that is not a distributed rank (a pool worker)."""
    import multiprocessing

    return multiprocessing.parent_process() is not None and not _distributed()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def resolve_mode(mode: str | None = None, console: Any = None) -> str:
    """``rich``, ``plain`` or ``off`` for a stage starting now in this process (see the module docstring)."""
    if global_rank() != 0 or in_dataloader_worker():
        return "off"
    mode = str(mode or os.environ.get(ENV) or "auto").strip().lower()
    if mode not in MODES:
        from lmforge.utils.errors import ConfigError

        raise ConfigError(f"{ENV}={mode}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if console is not None:
        return "rich" if console.is_terminal else "plain"
    return "rich" if _is_terminal(sys.stdout) and not _spawned_child() else "plain"


# -- formatting ------------------------------------------------------------------------------------

def fmt_seconds(seconds: float) -> str:
    """``12.3 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_count(n: float) -> str:
    return f"{int(round(n)):,}"


def fmt_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


def past_tense(description: str) -> str:
    first, _, rest = description.partition(" ")
    done = PAST.get(first.lower())
    if done is None:
        return description
    return (done.capitalize() if first[:1].isupper() else done) + (f" {rest}" if rest else "")


# -- the rich display ------------------------------------------------------------------------------

def fmt_clock(seconds: float | None) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour); ``-:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _columns(console: Any) -> list:
    """Description (cut to what the console's width leaves), bar, ``M/N unit``, rate, ``elapsed eta remaining``."""
    from rich.progress import BarColumn, ProgressColumn
    from rich.table import Column
    from rich.text import Text

    bar_width = 10 if console.width < 100 else 20
    # what the columns after the description take at their usual widest ("10,000/12,000 documents", "16,631/s",
    # "0:00 eta 0:01") with the gaps between columns; the description gets the rest of the line
    after = bar_width + 23 + 8 + 13 + 5

    class DescriptionColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            text = Text(task.description)
            width = max(16, console.width - after)
            text.truncate(width, overflow="ellipsis")
            return text

    class CountColumn(ProgressColumn):
        """``1,234/5,000 rows`` (``1,234 rows`` when the total is unknown)."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            total = "" if task.total is None else f"/{fmt_count(task.total)}"
            return Text(f"{fmt_count(task.completed)}{total} {unit}", style="progress.download")

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{fmt_rate(speed)}/s", style="progress.data.speed")

    class TimeColumn(ProgressColumn):
        """``0:12 eta 1:05``: elapsed, and the time left at the current rate (``-:--`` while unknown)."""

        def render(self, task: Any) -> Text:
            text = Text(fmt_clock(task.elapsed or 0.0), style="progress.elapsed")
            text.append(" eta ")
            text.append(fmt_clock(task.time_remaining), style="progress.remaining")
            return text

    def fixed() -> Column:
        return Column(no_wrap=True)

    return [DescriptionColumn(table_column=fixed()), BarColumn(bar_width=bar_width, table_column=fixed()),
            CountColumn(table_column=fixed()), RateColumn(table_column=fixed()), TimeColumn(table_column=fixed())]


class _Display:
    """One rich ``Progress`` shared by the stages open at once in this thread."""

    def __init__(self, console: Any):
        from rich.progress import Progress

        self.console = console
        self.progress = Progress(*_columns(console), console=console, transient=True, refresh_per_second=10)
        self.users = 0
        self.nested = False

    def open(self) -> bool:
        """Start the live display (False: it cannot be shown here; the stage falls back to its summary line)."""
        if self.users == 0:
            try:
                self.progress.start()
            except Exception:  # noqa: BLE001  (rich < 14: "Only one live display may be active at once")
                return False
            self.nested = bool(getattr(self.progress.live, "_nested", False))
        self.users += 1
        return True

    def close(self) -> bool:
        """One stage less; True when that was the last and the display stopped."""
        self.users -= 1
        if self.users > 0:
            return False
        self.progress.stop()
        if self.nested:  # the display it was drawn in still shows this one's last lines until it is redrawn
            stack = getattr(self.console, "_live_stack", None)
            if stack:
                stack[0].refresh()
        return True


def _displays() -> dict:
    if not hasattr(_local, "displays"):
        _local.displays = {}
    return _local.displays


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


# -- stages ----------------------------------------------------------------------------------------

class Stage:
    """A wait with a description, an optional total and a unit; see the module docstring.

    ``with stage(...) as s`` (or ``s.start()`` ... ``s.close()``) around the work, ``s.advance(n)`` as it goes.
    ``bar=False``: never a live bar, only the summary line (for a stage that another bar already shows).
    ``done``: the summary's description (default: the description with its first word in the past tense).
    """

    def __init__(self, description: str, total: float | None = None, unit: str = "items", *, done: str | None = None,
                 bar: bool = True, mode: str | None = None, console: Any = None):
        self.description = str(description)
        self.total = None if total is None else float(total)
        self.unit = unit
        self.done = done or past_tense(self.description)
        self.bar = bar
        self._mode_arg, self._console_arg = mode, console
        self.mode = "off"
        self.count = 0.0
        self.t0 = self.t1 = None  # type: float | None
        self._display: _Display | None = None
        self._task: Any = None
        self._next_draw = 0.0
        self._pushed = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "Stage":
        self.mode = resolve_mode(self._mode_arg, self._console_arg)
        self.t0 = time.perf_counter()
        if self.mode == "rich" and self.bar:
            self._open_bar()
        return self

    def _open_bar(self) -> None:
        import rich

        console = self._console_arg or rich.get_console()
        displays = _displays()
        display = displays.get(id(console))
        if display is None or display.console is not console:
            display = displays[id(console)] = _Display(console)
        if not display.open():
            if display.users == 0:
                displays.pop(id(console), None)
            return
        self._display = display
        self._task = display.progress.add_task(self.description, total=self.total, unit=self.unit)

    def advance(self, n: float = 1) -> None:
        self.count += n
        if self._task is not None:
            now = time.perf_counter()
            if now >= self._next_draw:
                self._next_draw = now + REFRESH_S
                self._draw()

    def _draw(self) -> None:
        display = self._display
        assert display is not None
        count = self.count if self.total is None else min(self.count, self.total)
        # a nested live display is not refreshed by a thread of its own: refresh it here (at most 10 times a second)
        display.progress.update(self._task, completed=count, refresh=display.nested)

    @property
    def elapsed(self) -> float:
        if self.t0 is None:
            return 0.0
        return (self.t1 if self.t1 is not None else time.perf_counter()) - self.t0

    def summary(self) -> str:
        """``<done>: <count> [of <total>] <unit> in <time> (<rate> <unit>/s)``."""
        count, total = self.count, self.total
        if total is not None and abs(count - total) < 1e-6 * max(1.0, total):
            count = total  # fractional advances that add up to the total
        of = f" of {fmt_count(total)}" if total is not None and count < total - 1e-9 else ""
        elapsed = self.elapsed
        line = f"{self.done}: {fmt_count(count)}{of} {self.unit} in {fmt_seconds(elapsed)}"
        if count > 0 and elapsed >= 1e-3:
            line += f" ({fmt_rate(count / elapsed)} {self.unit}/s)"
        return line

    def close(self, ok: bool = True) -> None:
        """End the stage: the bar goes; the summary line is shown when the work ended well."""
        if self.t0 is None or self.t1 is not None:
            return
        self.t1 = time.perf_counter()
        if self._pushed:
            stack = _stack()
            if self in stack:
                stack.remove(self)
            self._pushed = False
        display, self._display = self._display, None
        if display is not None:
            display.progress.remove_task(self._task)
            self._task = None
            if display.close():
                _displays().pop(id(display.console), None)
        if not ok or self.mode == "off":
            return
        line = self.summary()
        if self.mode == "rich":
            import rich
            from rich.text import Text

            (self._console_arg or rich.get_console()).print(Text(line), soft_wrap=True)
        else:
            print(line, file=sys.stdout, flush=True)

    def __enter__(self) -> "Stage":
        self.start()
        _stack().append(self)
        self._pushed = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # a generator closed early (the consumer stopped reading) ended well: its summary counts what was read
        self.close(ok=exc_type is None or exc_type is GeneratorExit)


def stage(description: str, total: float | None = None, unit: str = "items", *, done: str | None = None,
          bar: bool = True, mode: str | None = None, console: Any = None) -> Stage:
    """A :class:`Stage`, to be used as ``with stage(...) as s:``."""
    return Stage(description, total, unit, done=done, bar=bar, mode=mode, console=console)


def track(iterable: Iterable[T], description: str, total: float | None = None, unit: str = "items", *,
          done: str | None = None, mode: str | None = None, console: Any = None) -> Iterator[T]:
    """The items of ``iterable``, shown as a stage (``total``: ``len(iterable)`` when it has one, else unknown)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Stage(description, total, unit, done=done, mode=mode, console=console) as s:
        yield from counted(iterable, s)


def counted(iterable: Iterable[T], into: Stage) -> Iterator[T]:
    """The items of ``iterable``, each one advancing the stage ``into`` (an addition per item; the stage hears of
    it every 64 items and when the iteration ends)."""
    if into.mode == "off":
        yield from iterable
        return
    n = 0
    try:
        for item in iterable:
            n += 1  # counted when handed out (a consumer that stops at an item has read it)
            if n == 64:
                into.advance(n)
                n = 0
            yield item
    finally:
        into.advance(n)


def current() -> Stage | None:
    """The innermost stage this thread opened with ``with``, or None."""
    stack = _stack()
    return stack[-1] if stack else None


def advance(n: float = 1) -> None:
    """Advance the innermost open stage of this thread by ``n`` (nothing when no stage is open)."""
    stack = getattr(_local, "stack", None)
    if stack:
        stack[-1].advance(n)


def short_origin(origin: str, keep: int = 2) -> str:
    """Where rows came from, short enough for a progress line: file names without their folders (``train.csv``),
    the first ``keep`` of a list and how many more; a hub split (``glue[train]``) as it is."""
    parts = [p.strip() for p in str(origin).split(", ") if p.strip()]
    names = [os.path.basename(p.rstrip("/\\")) or p if ("/" in p or "\\" in p) else p for p in parts]
    if len(names) > keep:
        return f"{', '.join(names[:keep])} +{len(names) - keep} more"
    return ", ".join(names)
