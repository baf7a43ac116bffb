"""A sweep at a glance: ``<sweep dir>/sweep_report.md`` and ``<sweep dir>/plots/sweep.png``.

One row per job, best first by the job's ``optimized_metric`` in the direction ``task.mode``: the overrides
that differ between jobs (the ones every job shares are listed once), the metric, the test score, the
status and the run folder. Read from the files the jobs leave (``<job>/.hydra/overrides.yaml``,
``<job>/config.yaml``, ``<job>/metrics.json``), so it works with every launcher (basic, joblib, SLURM).
A failed job keeps its row with ``failed`` and the first line of its error (``<job>/error.txt``).

:class:`SweepReport` is the Hydra callback (``hydra.callbacks.sweep_report`` in ``configs/hydra/default.yaml``)
that writes both after every job (so a long sweep, or one the basic sweeper stops at a failed job, has
its report so far) and at the end of the sweep. For an Optuna sweep the report also links the study's
optimisation history and parameter importances (``plots/optuna_history.png``,
``plots/optuna_importances.png``, drawn by the sweeper with optuna's matplotlib functions) and names
the best trial of the whole study (``optimization_results.yaml``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

REPORT = "sweep_report.md"
PICTURE = "plots/sweep.png"
ERROR_FILE = "error.txt"
OPTUNA_RESULTS = "optimization_results.yaml"


@dataclass
class Job:
    num: int
    dir: Path
    overrides: list[str] = field(default_factory=list)
    status: str = "running"
    value: float | None = None
    metric: str | None = None
    mode: str = "max"
    error: str | None = None
    test_score: float | None = None
    seconds: float | None = None

    def params(self) -> dict[str, str]:
        out = {}
        for o in self.overrides:
            key, _, value = o.partition("=")
            out[key.lstrip("+~")] = value
        return out


def _read_yaml(path: Path) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders below the sweep dir (up to three levels) that Hydra ran a job in."""
    out = []
    for depth in ("*", "*/*", "*/*/*"):
        out += [p.parents[1] for p in sweep_dir.glob(f"{depth}/.hydra/overrides.yaml")]
    return sorted(set(out))


def read_job(folder: Path, index: int, default_metric: str | None, default_mode: str, final: bool) -> Job:
    num = int(folder.name) if folder.name.isdigit() else index
    job = Job(num=num, dir=folder, metric=default_metric, mode=default_mode)
    job.overrides = [str(o) for o in (_read_yaml(folder / ".hydra" / "overrides.yaml") or [])]
    cfg = _read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    if isinstance(cfg, dict):
        job.metric = cfg.get("optimized_metric") or job.metric
        job.mode = str((cfg.get("task") or {}).get("mode") or job.mode)
    metrics_file = folder / "metrics.json"
    error_file = folder / ERROR_FILE
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except ValueError:
            metrics = {}
        job.value = _number(metrics.get(job.metric)) if job.metric else None
        job.test_score = _number(metrics.get("test/score"))
        job.seconds = _number(metrics.get("time/total_sec"))
        job.status = "ok" if job.value is not None else (f"no {job.metric}" if job.metric else "ok")
    elif error_file.is_file():
        job.status = "failed"
        text = error_file.read_text(encoding="utf-8", errors="replace").strip()
        job.error = text.splitlines()[0][:300] if text else None
    elif final:
        job.status = "failed"
        job.error = "no metrics.json (the job ended before writing it; see its log)"
    return job


def rank_jobs(jobs: Sequence[Job]) -> list[Job]:
    """Best first: finished jobs by their metric (in each job's direction), then the rest by job number."""
    done = [j for j in jobs if j.value is not None]
    rest = [j for j in jobs if j.value is None]
    done.sort(key=lambda j: (-j.value if j.mode == "max" else j.value, j.num))  # type: ignore[operator]
    rest.sort(key=lambda j: (j.status != "running", j.num))
    return done + rest


def varying(jobs: Sequence[Job]) -> tuple[list[str], dict[str, str]]:
    """(keys whose value differs between jobs, {key: value} every job shares)."""
    params = [j.params() for j in jobs]
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in keys]
    vary = [k for k in keys if len({p.get(k) for p in params}) > 1]
    common = {k: params[0][k] for k in keys if k not in vary and params and k in params[0]}
    return vary, common


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def short_value(text: str) -> str:
    """An override value for a table or a label: long floats (Optuna's samples) to 4 significant digits."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return f"{number:.4g}" if len(text) > 8 and not text.isdigit() else text


def _as_number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def draw(jobs: Sequence[Job], vary: Sequence[str], path: Path, title: str) -> Path | None:
    from lmforge.reports import plots

    ranked = [j for j in jobs if j.value is not None]
    if not ranked:
        return None
    metric, mode = ranked[0].metric or "metric", ranked[0].mode
    param = vary[0] if len(vary) == 1 else None
    param_values = [_as_number(j.params().get(param)) for j in ranked] if param else None
    if param_values is not None and any(v is None for v in param_values):
        param, param_values = None, None
    labels = [f"job {j.num}: " + (" ".join(f"{k}={short_value(j.params().get(k, ''))}" for k in vary) or "(no override)")
              for j in ranked]
    fig = plots.sweep_figure(labels, [j.value for j in ranked], metric, mode, param=param,
                             param_values=param_values, title=title)
    return plots.save(fig, path)


def _optuna_section(sweep_dir: Path, shown: str | None = None) -> list[str]:
    res = _read_yaml(sweep_dir / OPTUNA_RESULTS)
    if not isinstance(res, dict) or res.get("name") != "optuna":
        return []
    lines = ["## Optuna study", "",
             f"Study `{res.get('study_name')}` ({res.get('storage') or 'in memory'}), direction {res.get('direction')}: "
             f"{res.get('n_trials')} trial(s) in the study, this sweep's and any earlier sweep's of the same "
             f"study ({', '.join(f'{v} {k}' for k, v in (res.get('states') or {}).items())}); every trial is in "
             f"[{OPTUNA_RESULTS}]({OPTUNA_RESULTS}).", ""]
    if res.get("best_trial") is not None:
        lines += [f"Best trial of the study: {res['best_trial']}, {res.get('metric') or 'value'} = "
                  f"{_fmt(_number(res.get('best_value')))}.", ""]
        command = "python train.py " + " ".join(res.get("best_overrides") or [])
        if res.get("best_overrides") and command != shown:  # a trial of an earlier sweep
            lines += ["```bash", command, "```", ""]
    pics = res.get("pictures") or {}
    for name, title in (("optuna_history", "optimisation history"), ("optuna_importances", "parameter importances")):
        rel = f"plots/{name}.png"
        if (sweep_dir / rel).is_file():
            lines += [f"![{title}]({rel})", ""]
        elif isinstance(pics, dict) and pics.get(name):
            lines += [f"_{title}: {pics[name]}_", ""]
    return lines


def build_report(sweep_dir: str | Path, metric: str | None = None, mode: str = "max", final: bool = True,
                 picture: bool = True) -> str:
    """The markdown of ``<sweep dir>/sweep_report.md`` (and ``plots/sweep.png`` when ``picture``)."""
    sweep_dir = Path(sweep_dir)
    folders = job_dirs(sweep_dir)
    jobs = rank_jobs([read_job(f, i, metric, mode, final) for i, f in enumerate(folders)])
    vary, common = varying(jobs)
    metric = next((j.metric for j in jobs if j.metric), metric)
    mode = next((j.mode for j in jobs if j.value is not None), mode)
    n_ok = sum(j.value is not None for j in jobs)
    n_failed = sum(j.status == "failed" for j in jobs)
    n_running = sum(j.status == "running" for j in jobs)
    lines = [f"# Sweep {sweep_dir.name}", "",
             f"{len(jobs)} job(s): {n_ok} with {metric or 'a metric'}"
             + (f", {n_failed} failed" if n_failed else "") + (f", {n_running} running" if n_running else "")
             + f". Best first by `{metric}` ({'higher' if mode == 'max' else 'lower'} is better)"
             + ("" if final else "; the sweep is still running") + ".", ""]
    if common:
        lines += ["Every job: `" + " ".join(f"{k}={v}" for k, v in common.items()) + "`", ""]
    header = ["rank", "job", *vary, metric or "metric", "test/score", "time (s)", "status", "run folder"]
    rows = []
    rank = 0
    for j in jobs:
        p = j.params()
        rank_text = ""
        if j.value is not None:
            rank += 1
            rank_text = str(rank)
        status = j.status + (f": {j.error}" if j.error else "")
        rel = os.path.relpath(j.dir, sweep_dir)
        report = j.dir / "report.md"
        link = f"[{rel}]({rel}/report.md)" if report.is_file() else f"`{rel}`"
        rows.append([rank_text, str(j.num), *[short_value(p.get(k, "")) for k in vary], _fmt(j.value), _fmt(j.test_score),
                     f"{j.seconds:.0f}" if j.seconds is not None else "", status, link])
    from lmforge.reports.run_report import table

    lines += [table(header, rows), ""]
    shown = None
    if jobs and jobs[0].value is not None:
        best = jobs[0]
        shown = "python train.py " + " ".join(o for o in best.overrides
                                              if o.split("=", 1)[0].lstrip("+~") != "hparams_search")
        lines += [f"Best: job {best.num}, {metric} = {_fmt(best.value)}. Retrain it alone:", "", "```bash",
                  shown, "```", ""]
    if picture:
        try:
            title = f"{sweep_dir.name}: {metric}"
            drawn = draw(jobs, vary, sweep_dir / PICTURE, title)
        except Exception as e:  # noqa: BLE001
            log.warning("sweep report: could not draw %s: %s: %s", sweep_dir / PICTURE, type(e).__name__, e)
            drawn = None
        if drawn is not None:
            lines += [f"![sweep]({PICTURE})", ""]
    lines += _optuna_section(sweep_dir, shown)
    return "\n".join(lines)


def write_sweep_report(sweep_dir: str | Path, metric: str | None = None, mode: str = "max", final: bool = True,
                       picture: bool = True) -> Path | None:
    """Write ``<sweep dir>/sweep_report.md`` (and ``plots/sweep.png``); a failure is logged, not raised."""
    sweep_dir = Path(sweep_dir)
    try:
        if not sweep_dir.is_dir():
            return None
        text = build_report(sweep_dir, metric, mode, final, picture)
        path = sweep_dir / REPORT
        tmp = sweep_dir / f".{REPORT}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path
    except Exception as e:  # noqa: BLE001  (a report never fails a sweep)
        log.warning("could not write %s: %s: %s", sweep_dir / REPORT, type(e).__name__, e)
        return None


# -- the Hydra callback ----------------------------------------------------------------------------

def _first_rank() -> bool:
    """False in the extra ranks of a multi-process job (Lightning's launcher re-runs the command line)."""
    return all(os.environ.get(k, "0") in ("0", "") for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def _select(cfg: Any, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return None


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core < 1.1
    _HydraCallback = object  # type: ignore[assignment,misc]


class SweepReport(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback: ``sweep_report.md`` and ``plots/sweep.png`` after every job of a ``-m`` sweep and at
    its end; a failed job's error in ``<job>/error.txt``. Does nothing for single runs."""

    def __init__(self, enabled: bool = True, picture: bool = True) -> None:
        self.enabled = bool(enabled)
        self.picture = bool(picture)
        self.sweep_dir: Path | None = None

    @staticmethod
    def _multirun(config: Any) -> bool:
        return str(_select(config, "hydra.mode")) == "RunMode.MULTIRUN" or str(_select(config, "hydra.mode")) == "MULTIRUN"

    def _sweep_dir(self, config: Any, job_dir: Path | None = None) -> Path | None:
        configured = _select(config, "hydra.sweep.dir")
        if job_dir is not None:
            if configured and Path(str(configured)).resolve() in job_dir.resolve().parents:
                return Path(str(configured))
            return job_dir.parent
        return self.sweep_dir or (Path(str(configured)) if configured else None)

    def _metric(self, config: Any) -> tuple[str | None, str]:
        return _select(config, "optimized_metric"), str(_select(config, "task.mode") or "max")

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if not self.enabled or not self._multirun(config) or not _first_rank():
            return
        try:
            out = _select(config, "hydra.runtime.output_dir")
            job_dir = Path(str(out)) if out else None
            if job_dir is not None and job_return is not None and getattr(job_return.status, "name", "") == "FAILED":
                err = job_return._return_value
                text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
                if text.startswith("UserError: error: "):
                    text = text[len("UserError: "):]
                job_dir.mkdir(parents=True, exist_ok=True)
                (job_dir / ERROR_FILE).write_text(text + "\n", encoding="utf-8")
            self.sweep_dir = self._sweep_dir(config, job_dir)
            if self.sweep_dir is not None:
                write_sweep_report(self.sweep_dir, *self._metric(config), final=False, picture=self.picture)
        except Exception as e:  # noqa: BLE001
            log.warning("sweep report after a job: %s: %s", type(e).__name__, e)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled or not _first_rank():
            return
        sweep_dir = self._sweep_dir(config)
        if sweep_dir is None:
            return
        path = write_sweep_report(sweep_dir, *self._metric(config), final=True, picture=self.picture)
        if path is not None:
            print(f"sweep report: {path}", flush=True)
