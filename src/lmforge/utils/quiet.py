"""Quiet runs: the libraries' messages a user cannot act on are dropped; what they can act on stays.

``quiet()`` is called once per process at the start of a run (``train.py``, ``eval.py``, the console
scripts, ``train()`` / ``evaluate()``). It drops:

* deprecation warnings (``DeprecationWarning``, ``PendingDeprecationWarning``, ``FutureWarning``)
  raised by libraries: they are for the libraries' authors (lmforge's own still show; so does
  everything when the interpreter got ``-W`` options or ``PYTHONWARNINGS``);
* Lightning's litlogger tip and its "Loading `train_dataloader` to estimate ..." line;
* transformers' progress bars for local work (loading weights, writing shards) and its load report, a table with raw terminal escape codes.
  What the report says that a user can act on stays, once and plainly: which weights were freshly
  initialised (a new classification head) or not used, in one line of lmforge's log;
* transformers' "`loss_type=None` was set in the config but it is unrecognized" (the default loss is
  the right one).

The "Total FLOPs: 0" line of the model summary is dropped by lmforge's summary callback
(``lmforge.callbacks.summary.ModelSummary``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

log = logging.getLogger("lmforge.models")

_DONE = False
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lightning's rank_zero_info lines that say nothing a user can act on
LIGHTNING_NOISE = ("💡 Tip:", "litlogger", "Loading `train_dataloader` to estimate number of stepping batches")
TRANSFORMERS_NOISE = ("`loss_type=None` was set in the config",)


def _rank() -> int:
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _DropMessages(logging.Filter):
    def __init__(self, needles: tuple[str, ...]):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not any(n in msg for n in self.needles)


def load_report_summary(report: str) -> str | None:
    """One plain line for a transformers load report: the freshly initialised and the unused weights."""
    text = _ANSI.sub("", report)
    source = re.search(r"LOAD REPORT\s+from:\s*(\S+)", text)
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[1] in ("MISSING", "UNEXPECTED", "MISMATCH"):
            found.setdefault(cells[1], []).append(cells[0])
    if not found:
        return None
    where = f" at {source.group(1)}" if source else ""
    parts = []
    if "MISSING" in found:
        parts.append(f"{', '.join(found['MISSING'])} freshly initialised (not in the checkpoint{where}); "
                     "this run trains them")
    if "MISMATCH" in found:
        parts.append(f"{', '.join(found['MISMATCH'])} re-initialised (their shapes differ from the checkpoint's)")
    if "UNEXPECTED" in found:
        names = found["UNEXPECTED"]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        parts.append(f"{shown} in the checkpoint but not used by this model")
    return "model weights: " + "; ".join(parts)


class _LoadReport(logging.Filter):
    """Replaces transformers' load report by one plain line (once per message, on rank 0)."""

    def __init__(self):
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        if "LOAD REPORT" not in msg:
            return True
        line = load_report_summary(msg)
        if line and line not in self.said and _rank() == 0:
            self.said.add(line)
            log.info(line)
        return False


def _quiet_warnings() -> None:
    if sys.warnoptions:  # the user asked for warnings explicitly (-W, PYTHONWARNINGS)
        return
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"lmforge(\.|$)")


def _quiet_lightning() -> None:
    drop = _DropMessages(LIGHTNING_NOISE)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(drop)


def _quiet_transformers() -> None:
    report = _LoadReport()
    drop = _DropMessages(TRANSFORMERS_NOISE)
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):
        logging.getLogger(name).addFilter(report)
        logging.getLogger(name).addFilter(drop)
    try:
        from transformers.utils import logging as hf_logging

        # transformers' own bars ("Loading weights", "Writing model shards": local, seconds) go; the
        # Hub's download bars stay (transformers turns them off with its own: turn them back on)
        user_disabled_hub = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes", "on")
        hf_logging.disable_progress_bar()
        if not user_disabled_hub:
            from huggingface_hub.utils import enable_progress_bars

            enable_progress_bars()
    except Exception:  # noqa: BLE001  (no transformers: nothing to quiet)
        pass


def quiet() -> None:
    """Drop the messages a user cannot act on (see the module docstring). Safe to call more than once."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    _quiet_warnings()
    _quiet_lightning()
    _quiet_transformers()
