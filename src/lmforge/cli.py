"""Entry points: the console scripts ``lmforge-train`` / ``lmforge-eval`` (the same as ``train.py`` /
``eval.py``, usable from any directory), and how every entry point reports a user's mistake.

The config tree ships inside the package (``lmforge/configs``; the checkout's top-level ``configs`` is
a link to it). It is found in this order: ``$LMFORGE_CONFIG_DIR``, the package's own tree. Add your
own config folder with ``hydra.searchpath=[file:///path/to/my/configs]``: its ``experiment/*.yaml``
and other group options join ours without editing them.

User errors read as errors: lmforge's own data and config errors (:class:`~lmforge.utils.errors.LMForgeError`,
and a ``FileNotFoundError`` lmforge raises for a missing data file or checkpoint) end the command with
``error: <message>`` on stderr and exit status 2, without a traceback; ``HYDRA_FULL_ERROR=1`` shows the
traceback too. A full disk (``ENOSPC``) is said the same way, naming the file. An error every rank of a
distributed run raises together (a non-finite loss) is said once, by rank 0; a rank that stops because
another one died (gloo's ``Connection closed by peer``) says so in one line and exits 1, the failing rank's
own traceback being above. Anything else is a crash and keeps its traceback. Under ``-m`` a failed job is handed to
the sweeper as usual (the Optuna sweeper records the trial as failed and goes on; the basic sweeper
stops and the command ends as above).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

EXIT_USER_ERROR = 2


def config_dir() -> str:
    """The config tree: ``$LMFORGE_CONFIG_DIR``, else the one shipped in the package."""
    env = os.environ.get("LMFORGE_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent / "configs")
    for c in candidates:
        if (c / "train.yaml").is_file():
            return str(c)
    raise SystemExit(f"lmforge: no config tree found (looked in {', '.join(map(str, candidates))}); "
                     "set LMFORGE_CONFIG_DIR=<folder with train.yaml>")


# -- user errors -------------------------------------------------------------------------------------

def _is_lmforge_frame(filename: str) -> bool:
    root = str(Path(__file__).resolve().parent)
    try:
        return str(Path(filename).resolve()).startswith(root + os.sep)
    except OSError:  # pragma: no cover - odd frame file names
        return False


def _unwrap(exc: BaseException) -> BaseException:
    """The exception behind Hydra's ``InstantiationException`` (what a ``_target_`` raised)."""
    from hydra.errors import InstantiationException

    seen = set()
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def user_error_message(exc: BaseException) -> str | None:
    """The message to show for a user's mistake, or None when ``exc`` is a crash.

    A user's mistake: an :class:`LMForgeError` (also behind Hydra's ``InstantiationException``), or a
    ``FileNotFoundError`` raised in lmforge's own code (a missing data file, checkpoint or input file).
    """
    from lmforge.utils.errors import LMForgeError

    exc = _unwrap(exc)
    if isinstance(exc, UserError):
        return exc.message
    if isinstance(exc, LMForgeError):
        return str(exc)
    disk_full = _disk_full_message(exc)
    if disk_full:
        return disk_full
    if isinstance(exc, FileNotFoundError) and exc.__traceback__ is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames and _is_lmforge_frame(frames[-1].filename):
            return str(exc)
    return None


def _disk_full_message(exc: BaseException) -> str | None:
    """A full disk anywhere else (a log, a cache, predictions): said plainly, naming the file when known."""
    import errno

    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" while writing {e.filename}" if e.filename else ""
            return f"disk full{where}: {e.strerror or os.strerror(e.errno)}"
        e = e.__cause__ or e.__context__
    return None


def _said_by_rank_zero(exc: BaseException | None) -> bool:
    """An error every rank raises at the same step (a non-finite loss): rank 0 says it, the others exit quietly."""
    return exc is not None and bool(getattr(_unwrap(exc), "all_ranks", False)) and _rank() != 0


def _let_rank_zero_speak(timeout: float = 10.0) -> None:
    """A rank > 0 that leaves quietly waits (at most ``timeout`` s) for its parent, Lightning's rank 0, to end
    first: Lightning kills the main process as soon as it sees a child exit non-zero, and rank 0 would not get
    to say the error."""
    import time

    parent, end = os.getppid(), time.monotonic() + timeout
    while time.monotonic() < end and os.getppid() == parent:
        time.sleep(0.1)


# what gloo / NCCL raise in a rank whose peer died: the peer's own error says why
_PEER_FAILURE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
                 "NCCL communicator was aborted")


def peer_failure(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(p in str(exc) for p in _PEER_FAILURE)


def _compact_base() -> type:
    try:
        from hydra.errors import CompactHydraException

        return CompactHydraException
    except ImportError:  # pragma: no cover - hydra-core < 1.2
        return Exception


class UserError(_compact_base()):  # type: ignore[misc]
    """A user's mistake on its way out of a Hydra job: Hydra prints a compact exception as its message
    alone (no traceback), and :func:`run` turns the exit status into 2. ``kind`` is the original class."""

    def __init__(self, message: str, kind: str = "LMForgeError"):
        super().__init__(message, kind)
        self.message, self.kind = message, kind

    def __str__(self) -> str:
        return f"error: {self.message}"


def _rank() -> int:
    try:
        from lightning.pytorch.utilities import rank_zero_only

        return int(getattr(rank_zero_only, "rank", 0) or 0)
    except Exception:  # noqa: BLE001
        return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or 0)


def _write_to_log_files(line: str) -> None:
    """The error also ends the job's own log file (``<run>/train.log``), where a cluster user looks."""
    record = logging.makeLogRecord({"name": "lmforge", "levelno": logging.ERROR, "levelname": "ERROR", "msg": line})
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            try:
                h.handle(record)
                h.flush()
            except Exception:  # noqa: BLE001  (a log file we cannot write is no reason to hide the error)
                pass


def report_user_error(message: str, exc: BaseException | None = None) -> None:
    if _said_by_rank_zero(exc):
        _let_rank_zero_speak()
        return
    rank = _rank()
    prefix = "error: " if rank == 0 else f"error: [rank {rank}] "
    _write_to_log_files(prefix + message)
    sys.stdout.flush()
    print(prefix + message, file=sys.stderr, flush=True)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Around the body of a ``@hydra.main`` task function: a user's mistake ends a single run with
    ``error: <message>`` and exit status 2 (no traceback); in a sweep (``-m``) the job fails with a
    compact :class:`UserError` the sweeper handles. Crashes, and everything under ``HYDRA_FULL_ERROR=1``,
    pass unchanged."""
    try:
        yield
    except Exception as e:
        message = user_error_message(e)
        if message is None and peer_failure(e) and not _full_error() and not _multirun():
            # another rank failed first and said why; this one says it stopped, without a second traceback
            import re

            detail = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0])[:200]  # gloo's source location
            report_user_error(f"stopped: another process of this distributed run failed (its error is above); {detail}")
            raise SystemExit(1) from None
        if message is None or _full_error():
            raise
        if not _multirun():
            report_user_error(message, e)
            raise SystemExit(EXIT_USER_ERROR) from None
        _write_to_log_files(f"error: {message}")
        raise UserError(message, type(_unwrap(e)).__name__) from None


def run(main: Callable[[], Any]) -> None:
    """Call a ``@hydra.main`` function as a command: a user's mistake exits with status 2.

    Hydra prints a failed sweep's :class:`UserError` itself (as ``error: <message>``) and exits 1: that
    becomes 2. Under ``HYDRA_FULL_ERROR=1`` the original exception reaches here: its traceback is
    printed, then the ``error:`` line, and the status is 2 as well.
    """
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and user_error_message(e.__context__ or e) is not None:
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        traceback.print_exc()
        report_user_error(message, e)
        raise SystemExit(EXIT_USER_ERROR) from None


# -- console scripts ---------------------------------------------------------------------------------

def _main(config_name: str, task: Callable[[Any], Any], job_name: str) -> None:
    import hydra

    import lmforge  # noqa: F401  (resolvers)
    from lmforge.sweeps import register_resolvers

    register_resolvers()
    # Hydra names the job (and its log file, <run>/<job name>.log) after the task function's module
    task.__module__ = f"lmforge.{job_name}"
    run(hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(task))


def train_main() -> None:
    """``lmforge-train [overrides]``: the same as ``python train.py [overrides]``."""
    from lmforge.utils.quiet import quiet

    quiet()
    from lmforge.train import metric_value, train

    def task(cfg):
        with reported_errors():
            return metric_value(train(cfg), cfg.get("optimized_metric"))

    _main("train", task, "train")


def eval_main() -> None:
    """``lmforge-eval [overrides]``: the same as ``python eval.py [overrides]``."""
    from lmforge.utils.quiet import quiet

    quiet()
    from lmforge.evaluate import evaluate

    def task(cfg):
        with reported_errors():
            return evaluate(cfg)

    _main("eval", task, "eval")


if __name__ == "__main__":  # pragma: no cover - python -m lmforge.cli [overrides] (DDP children of lmforge-train too)
    train_main()
