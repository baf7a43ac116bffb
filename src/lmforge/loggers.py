"""Loggers from config, with what a dashboard needs filled in: W&B runs named from the job's
overrides, grouped by sweep, tagged, carrying the resolved config and the best metric, resumable
(the run id lives in the run directory), and tables of text samples on every logger that can show them.

``CSVLogger`` is Lightning's, with a writer that takes the columns of ``metrics.csv`` from the file
itself, not from its own memory: under ``strategy=ddp_spawn`` each ``fit``/``test`` runs in fresh
processes holding copies of the logger made before the file existed, and Lightning's writer then
rewrote the file with the test columns only and failed (``dict contains fields not in fieldnames``)."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import hydra
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.utils.secrets import redact_config, redact_override

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


class CSVExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, whose known columns are the file's header whenever the file exists."""

    def _file_header(self) -> list[str] | None:
        if not self._fs.isfile(self.metrics_file_path):
            return None
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            first = f.readline()
        return next(csv.reader([first]), []) if first.strip() else []

    def save(self) -> None:
        if self.metrics:
            header = self._file_header()
            if header is not None:
                # another process (a ddp_spawn worker, an earlier fit) may have written it: the file is the truth
                self.metrics_keys = list(header)
        super().save()


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with :class:`CSVExperimentWriter` (same arguments, same files)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> CSVExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = CSVExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def _hydra_info() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        return {"multirun": hc.mode == RunMode.MULTIRUN, "overrides": hc.job.override_dirname,
                "sweep_dir": hc.sweep.dir, "job_num": hc.job.get("num")}
    except Exception:  # pragma: no cover - hydra internals vary; names are a convenience
        return {}


def wandb_settings(cfg: DictConfig, lg: DictConfig, out: Path, resume_from: str | None) -> DictConfig:
    """Fill name/group/tags/id of a WandbLogger config that left them null."""
    info = _hydra_info()
    lg = lg.copy()
    with open_dict(lg):
        if not lg.get("name"):
            lg.name = redact_override(info.get("overrides") or "") or out.name  # no secret typed on the command line
        if not lg.get("group"):
            lg.group = (f"{cfg.task_name}/{Path(info['sweep_dir']).name}" if info.get("multirun")
                        else str(cfg.task_name))
        tags = list(lg.get("tags") or [])
        model = cfg.model.get("family") or Path(str(cfg.model.get("name_or_path") or "model")).name
        for t in (str(cfg.task_name), f"model:{model}", f"strategy:{cfg.strategy.get('name', 'auto')}",
                  "sweep" if info.get("multirun") else "single"):
            if t not in tags:
                tags.append(t)
        lg.tags = tags
        previous = _previous_wandb_id(resume_from)
        if previous and not lg.get("id"):
            lg.id = previous
            lg.resume = "allow"
            log.info("resuming W&B run %s (from %s)", previous, resume_from)
    return lg


def _previous_wandb_id(ckpt_path: str | None) -> str | None:
    if not ckpt_path:
        return None
    p = Path(ckpt_path).resolve()
    for parent in (p.parent.parent, p.parent):  # <run>/checkpoints/<ckpt>
        f = parent / WANDB_ID_FILE
        if f.is_file():
            return f.read_text().strip()
    return None


# -- W&B without a login or a network: offline, said once, never a hang ------------------------------

WANDB_PROBE_TIMEOUT = 3.0  # seconds to reach the W&B host before logging offline instead
WANDB_INIT_TIMEOUT = 60.0  # seconds wandb.init may take online before the run falls back to offline


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _has_wandb_key(base_url: str) -> bool:
    """An API key for ``base_url`` in the environment or ``~/.netrc`` (``wandb login`` writes it there)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(base_url).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def _reachable(base_url: str, timeout: float = WANDB_PROBE_TIMEOUT) -> bool:
    import socket
    from urllib.parse import urlparse

    u = urlparse(base_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_offline_reason(lg: DictConfig) -> str | None:
    """Why a W&B logger meant to go online cannot (no API key, host unreachable), or None."""
    if lg.get("offline") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return None  # offline (or off) on purpose: nothing to say
    base = _wandb_base_url()
    if not _has_wandb_key(base):
        return "not logged in (no WANDB_API_KEY, no `wandb login`)"
    if not _reachable(base):
        return f"{base} is unreachable"
    return None


def _wandb_logger(lg: DictConfig) -> Any:
    reason = wandb_offline_reason(lg)
    extra: dict[str, Any] = {}
    if reason:
        lg = lg.copy()
        with open_dict(lg):
            lg.offline = True
    elif not lg.get("offline") and "settings" not in lg:
        import wandb

        extra["settings"] = wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT)  # a slow host: offline after 60 s
    logger = hydra.utils.instantiate(lg, **extra, _convert_="object")
    logger._lmforge_offline_reason = reason
    return logger


def _start_wandb(lg: Any) -> Any:
    """The W&B run; an online start that fails (timeout, refused key) starts again offline, with a warning."""
    try:
        return lg.experiment
    except Exception as e:  # noqa: BLE001  (whatever wandb raises: the run goes on offline)
        if getattr(lg, "_offline", False) or os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun"):
            raise
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1)
        lg._offline = True  # Lightning's WandbLogger then sets WANDB_MODE=dryrun (train.end_job restores it)
        lg._wandb_init.pop("settings", None)
        lg._experiment = None
        lg._lmforge_offline_reason = f"could not start online ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        return lg.experiment


def _say_offline(lg: Any, run: Any) -> None:
    reason = getattr(lg, "_lmforge_offline_reason", None)
    if not reason:
        return
    folder = Path(run.dir).parent if getattr(run, "dir", None) else Path(lg.save_dir or ".") / "wandb"
    message = f"W&B: {reason}; logging offline to {folder}; sync later with `wandb sync {folder}`"
    log.warning(message)


def build_loggers(cfg: DictConfig, out: Path | None = None, resume_from: str | None = None) -> list:
    out = Path(out or cfg.paths.output_dir)
    loggers = []
    for name, lg in (cfg.get("logger") or {}).items():
        if lg is None or "_target_" not in lg:
            continue
        if "WandbLogger" in str(lg._target_):
            loggers.append(_wandb_logger(wandb_settings(cfg, lg, out, resume_from)))
            continue
        loggers.append(hydra.utils.instantiate(lg, _convert_="object"))
    return loggers


@rank_zero_only
def start_loggers(loggers: Sequence, cfg: DictConfig, out: Path) -> None:
    """Every logger gets the whole resolved config; W&B's run id is kept beside the run."""
    flat = OmegaConf.to_container(redact_config(cfg), resolve=True)  # secrets stay out of every logger
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            _say_offline(lg, _start_wandb(lg))
        lg.log_hyperparams(flat)
        if type(lg).__name__ == "WandbLogger":
            (out / WANDB_ID_FILE).write_text(lg.experiment.id)


@rank_zero_only
def finish_loggers(loggers: Sequence, metrics: dict, monitor: str | None, best_score: Any) -> None:
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            summary = lg.experiment.summary
            if monitor and best_score is not None:
                summary[f"best/{monitor}"] = float(best_score)
            for k, v in metrics.items():
                if k.startswith("test/") or k.startswith("params/"):
                    summary[k] = v


def log_table(trainer: Any, key: str, columns: list[str], rows: list[list[Any]], out: Path | None = None,
              write_file: bool = True) -> None:
    """Text samples (predictions, generations) as a table where the logger shows tables: a W&B table,
    TensorBoard text (markdown), and a JSON-lines file ``<key>.jsonl`` in the run directory unless the
    caller writes its own (``write_file=False``)."""
    if not trainer.is_global_zero:
        return
    step = int(getattr(trainer, "global_step", 0))
    for lg in trainer.loggers:
        kind = type(lg).__name__
        if kind == "WandbLogger":
            lg.log_table(key=key, columns=columns, data=rows, step=None)
        elif kind == "TensorBoardLogger":
            head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "".join("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |\n"
                           for r in rows)
            lg.experiment.add_text(key, head + body, global_step=step)
    if not write_file:
        return
    folder = Path(out) if out else Path(trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{key.replace('/', '_')}.jsonl", "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"step": step, **dict(zip(columns, r))}) + "\n")
