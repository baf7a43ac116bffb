"""``<run>/report.md``: one page that says what a run was and what it gave.

The command that reproduces it (from ``<run>/.hydra/overrides.yaml``, which is redacted of secrets), the
resolved config's key values, the final metrics (``metrics.json``), the pictures of ``plots/``, the export
and a snippet that loads it with ``transformers``. Written by ``train()`` on rank 0 at the very end; a
report that cannot be written is a warning, never a failed run.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

REPORT = "report.md"
# pictures in this order, then any other plots/*.png by name
PICTURE_ORDER = ("loss", "metrics", "lr", "confusion_matrix", "confusion_matrix_test", "f1_per_type",
                 "f1_per_type_test")
METRIC_GROUPS = ("test/", "val/", "train/", "params/", "perf/", "time/")


def _sel(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return default
    return default if value is None else value


def command_line(run: Path, script: str | None = None) -> str:
    """``python train.py <overrides>``: the overrides Hydra saved for this run (a sweep job's own), else
    the ones of the Hydra config in this process, else none."""
    overrides: Sequence[str] | None = None
    saved = run / ".hydra" / "overrides.yaml"
    if saved.is_file():
        try:
            overrides = [str(o) for o in (OmegaConf.load(saved) or [])]
        except Exception:  # noqa: BLE001
            overrides = None
    if overrides is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                overrides = [str(o) for o in HydraConfig.get().overrides.task]
        except Exception:  # noqa: BLE001
            overrides = None
    if script is None:
        name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
        script = "lmforge-train" if name == "lmforge-train" else "python train.py"
    return " ".join([script, *(shlex.quote(o) for o in overrides or [])])


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def model_summary(cfg: Any) -> str:
    name = _sel(cfg, "model.name_or_path")
    family = _sel(cfg, "model.family")
    if name:
        return str(name) + (f" ({family})" if family else "")
    size = _sel(cfg, "model.size")
    if isinstance(size, Mapping) or OmegaConf.is_config(size):
        dims = ", ".join(f"{k} {size[k]}" for k in ("num_layers", "hidden_size", "num_heads") if size.get(k) is not None)
        return f"{family or 'model'} from scratch, size {size.get('name', '?')} ({dims})"
    return str(family or "?")


def data_summary(cfg: Any) -> str:
    data = _sel(cfg, "data", {})
    if not data:
        return "?"
    parts = [f"source={data.get('source', '?')}"]
    for k, v in data.items():
        if v in (None, "", [], {}):
            continue
        if k in ("sample", "hub_name", "hub_config", "hub_split") or k.endswith("_file") or k.endswith("_files"):
            parts.append(f"{k}={_fmt(list(v) if OmegaConf.is_list(v) else v)}")
    for k in ("max_train_samples", "max_eval_samples", "max_length"):
        if data.get(k) is not None:
            parts.append(f"{k}={data.get(k)}")
    return ", ".join(parts)


def key_values(cfg: Any) -> list[tuple[str, str]]:
    """The config values a reader wants first, as (key, value)."""
    opt = _sel(cfg, "optimizer", {})
    rows = [
        ("task", _sel(cfg, "task_name", "?")),
        ("model", model_summary(cfg)),
        ("data", data_summary(cfg)),
        ("optimizer", f"{str(opt.get('_target_', '?')).rsplit('.', 1)[-1]}, lr {_fmt(opt.get('lr'))}, "
                      f"weight decay {_fmt(opt.get('weight_decay'))}" if opt else "?"),
        ("scheduler", f"{_sel(cfg, 'scheduler.name', '?')}, warmup {_fmt(_sel(cfg, 'scheduler.warmup', 0))}"),
        ("batch size", f"{_sel(cfg, 'data.batch_size', '?')} per device"
                       + (f", global {_sel(cfg, 'data.global_batch_size')}" if _sel(cfg, "data.global_batch_size") else "")
                       + (f", accumulate {_sel(cfg, 'trainer.accumulate_grad_batches')}"
                          if (_sel(cfg, "trainer.accumulate_grad_batches", 1) or 1) != 1 else "")),
        ("length", f"max_epochs {_sel(cfg, 'trainer.max_epochs', '?')}, max_steps {_sel(cfg, 'trainer.max_steps', -1)}"
                   + (f", val_check_interval {_sel(cfg, 'trainer.val_check_interval')}"
                      if _sel(cfg, "trainer.val_check_interval") is not None else "")),
        ("precision", _sel(cfg, "trainer.precision", "?")),
        ("strategy", f"{_sel(cfg, 'strategy.name', 'auto')}, accelerator {_sel(cfg, 'trainer.accelerator', 'auto')}, "
                     f"devices {_sel(cfg, 'trainer.devices', 'auto')}, nodes {_sel(cfg, 'trainer.num_nodes', 1)}"),
        ("seed", _sel(cfg, "seed", "?")),
    ]
    if _sel(cfg, "distill"):
        rows.append(("distill", f"teacher {_sel(cfg, 'distill.teacher', '?')}"))
    if _sel(cfg, "ckpt_path"):
        rows.append(("resumed from", _sel(cfg, "ckpt_path")))
    return [(k, _fmt(v)) for k, v in rows]


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    def group(k: str) -> tuple[int, str]:
        for i, g in enumerate(METRIC_GROUPS):
            if k.startswith(g):
                return i, k
        return len(METRIC_GROUPS), k

    rows = []
    for k in sorted(metrics, key=group):
        v = metrics[k]
        if k == "best_checkpoint" or isinstance(v, (dict, list)):
            continue
        if k.startswith("params/") and isinstance(v, (int, float)):
            v = int(v)
        rows.append((k, _fmt(v)))
    return rows


def pictures(run: Path) -> list[Path]:
    folder = run / "plots"
    if not folder.is_dir():
        return []
    found = {p.stem: p for p in folder.glob("*.png")}
    ordered = [found.pop(n) for n in PICTURE_ORDER if n in found]
    return ordered + [found[n] for n in sorted(found)]


def load_snippet(task_cls: Any, export: Path, example: str | None) -> str:
    """Python that loads the export with ``transformers``: the task's pipeline where transformers has one,
    and its Auto class."""
    lines = []
    pipe = getattr(task_cls, "pipeline_task", None)
    auto = getattr(getattr(task_cls, "auto_cls", None), "__name__", None)
    path = json.dumps(str(export))
    if pipe:
        lines += ["from transformers import pipeline", "",
                  f"pipe = pipeline({json.dumps(pipe)}, model={path})",
                  f"print(pipe({json.dumps(example or 'Some text.', ensure_ascii=False)}))"]
    if auto:
        if lines:
            lines.append("")
        lines += [f"from transformers import {auto}, AutoTokenizer", "",
                  f"model = {auto}.from_pretrained({path})",
                  f"tokenizer = AutoTokenizer.from_pretrained({path})"]
    return "\n".join(lines)


def _example(cfg: Any) -> str | None:
    texts = _sel(cfg, "predict.texts") or _sel(cfg, "task.examples")
    if texts and len(texts) and isinstance(texts[0], str):
        return texts[0]
    return None


def _predictions(run: Path, n: int = 5) -> list[str]:
    path = run / "predictions.jsonl"
    if not path.is_file():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) >= n:
                break
            out.append(line.rstrip("\n")[:400])
    return out


def build_report(cfg: DictConfig | Mapping, run: str | Path, metrics: Mapping[str, Any] | None = None,
                 task_cls: Any = None, script: str | None = None) -> str:
    run = Path(run)
    if metrics is None:
        mfile = run / "metrics.json"
        metrics = json.loads(mfile.read_text()) if mfile.is_file() else {}
    task = _sel(cfg, "task_name", "run")
    parts = [f"# {task}: {run.name}", "",
             "Written by lmforge at the end of the run. Everything below lives in this folder.", "",
             "## Command", "", "```bash", command_line(run, script), "```", ""]
    parts += ["## Config (key values)", "",
              "The whole resolved config is [config.yaml](config.yaml).", "",
              table(["key", "value"], key_values(cfg)), ""]
    rows = metric_rows(metrics)
    parts += ["## Final metrics", "",
              "From [metrics.json](metrics.json): `test/*` are the test split evaluated with the best checkpoint, "
              "`val/*` the last validation." if any(k.startswith("test/") for k, _ in rows) else
              "From [metrics.json](metrics.json); `val/*` are the last validation.", ""]
    parts += [table(["metric", "value"], rows) if rows else "_no metrics were written_", ""]
    best = metrics.get("best_checkpoint")
    if best:
        try:
            best = str(Path(best).resolve().relative_to(run.resolve()))
        except ValueError:
            pass
        parts += [f"Best checkpoint: `{best}`.", ""]
    pics = pictures(run)
    if pics:
        parts += ["## Pictures", ""]
        for p in pics:
            rel = p.relative_to(run).as_posix()
            parts += [f"![{p.stem}]({rel})", ""]
    export = run / "export"
    if export.is_dir():
        parts += ["## Export", "", f"A Hugging Face folder (model + tokenizer): `{export}`", "", "```python",
                  load_snippet(task_cls, export.resolve(), _example(cfg)), "```", ""]
    else:
        parts += ["## Export", "", "None (`export=false`, or the run ended before it).", ""]
    preds = _predictions(run)
    if preds:
        parts += ["## Predictions on new inputs", "", "First lines of [predictions.jsonl](predictions.jsonl):", "",
                  "```json", *preds, "```", ""]
    parts += ["## Next", "", "```bash",
              f"python eval.py run={run}                      # evaluate again (split=..., file=...)",
              f"python eval.py run={run} predict.texts='[\"...\"]'   # predict on new inputs",
              f"python train.py ckpt_path={run / 'checkpoints' / 'last.ckpt'}   # continue training (with the same overrides)",
              "```", ""]
    return "\n".join(parts)


def write_run_report(cfg: DictConfig | Mapping, run: str | Path, metrics: Mapping[str, Any] | None = None,
                     task_cls: Any = None) -> Path | None:
    """Write ``<run>/report.md``; a failure is logged, not raised."""
    run = Path(run)
    try:
        from lmforge.utils.secrets import redact_config, redact_text

        if isinstance(cfg, DictConfig):
            cfg = redact_config(cfg)  # secret-named keys and values from secret environment variables: ***
        text = redact_text(build_report(cfg, run, metrics, task_cls))  # and anything else that holds one
        path = run / REPORT
        tmp = run / f".{REPORT}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        log.info("wrote %s", path)
        return path
    except Exception as e:  # noqa: BLE001  (a report never fails a finished run)
        log.warning("could not write %s: %s: %s", run / REPORT, type(e).__name__, e)
        return None


def build_eval_report(out: str | Path, run: str | Path, checkpoint: str | Path, metrics: Mapping[str, Any]) -> str:
    """``<eval output>/report.md``: what ``eval.py`` evaluated (the run, its checkpoint, the split or file) and what it
    gave (the metrics, named by the split they were computed on), its pictures and the files it wrote."""
    out, run = Path(out), Path(run)
    split, source = metrics.get("split"), metrics.get("source")
    parts = [f"# evaluation: {run.name}", "",
             "Written by eval.py. Everything below lives in this folder.", "",
             "## Command", "", "```bash", command_line(out, "python eval.py"), "```", "",
             "## What was evaluated", "",
             table(["what", "value"], [("run", str(run)), ("checkpoint", str(checkpoint)),
                              ("labelled data", (f"`{source}`" if split == "file" else f"the run's {split} split")
                               if split else "none (split=null)"),
                              ("prediction precision", _fmt(metrics.get("predict/precision", "-")))]), ""]
    rows = metric_rows({k: v for k, v in metrics.items() if k not in ("split", "source", "predictions_file")})
    parts += ["## Metrics", "",
              (f"From [metrics.json](metrics.json); each metric is named by the split it was computed on "
               f"(`{split}/*`)" + (", `predict/*` the prediction speed." if any(k.startswith("predict/") for k, _ in rows)
                                   else ".")) if split else "From [metrics.json](metrics.json).", "",
              table(["metric", "value"], rows) if rows else "_no metrics (no labelled data was evaluated)_", ""]
    pics = sorted(out.glob("*.png")) + pictures(out)
    if pics:
        parts += ["## Pictures", ""]
        for p in pics:
            parts += [f"![{p.stem}]({p.relative_to(out).as_posix()})", ""]
    preds = Path(str(metrics.get("predictions_file") or out / "predictions.jsonl"))
    if preds.is_file():
        with open(preds, encoding="utf-8") as f:
            first = [line.rstrip("\n")[:400] for _, line in zip(range(5), f)]
        parts += ["## Predictions", "", f"First lines of `{preds}`:", "", "```json", *first, "```", ""]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                   if p.is_file() and ".hydra" not in p.parts and p.name not in (REPORT, f".{REPORT}.tmp"))
    if files:
        parts += ["## Files", "", *[f"- [{f}]({f})" for f in files], ""]
    return "\n".join(parts)


def write_eval_report(out: str | Path, run: str | Path, checkpoint: str | Path, metrics: Mapping[str, Any]) -> Path | None:
    """Write ``<eval output>/report.md``; a failure is logged, not raised (the metrics are already saved)."""
    out = Path(out)
    try:
        from lmforge.utils.secrets import redact_text

        text = redact_text(build_eval_report(out, run, checkpoint, metrics))
        tmp = out / f".{REPORT}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / REPORT)
        log.info("wrote %s", out / REPORT)
        return out / REPORT
    except Exception as e:  # noqa: BLE001  (a report never fails a finished evaluation)
        log.warning("could not write %s: %s: %s", out / REPORT, type(e).__name__, e)
        return None
