"""``evaluate(cfg) -> metrics``: re-evaluate a finished run, and predict with it.

The model and data are rebuilt from the run's own saved config (``<run>/config.yaml``), never from
today's defaults; the weights come from the run's best checkpoint (or the one given), loaded without
unpickling code. The facts the model was built with (label names, vocabulary size) come from the
checkpoint, so files with other columns or a subset of the labels can be evaluated too; the tokenizer
comes from the run's export when it has one. Like :func:`lmforge.train.train`, it calls only the task
contract.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.callbacks.progress import progress_bar
from lmforge.checkpoints import check_run_config
from lmforge.distill import student_run_config, student_state_dict
from lmforge.strategies import load_checkpoint_any
from lmforge.train import _floats, build_datamodule, build_module, print_predictions
from lmforge.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def find_run(cfg: DictConfig) -> tuple[Path, Path]:
    """(run directory, checkpoint file) from ``run=`` and/or ``ckpt_path=``."""
    ckpt = Path(cfg.ckpt_path).expanduser() if cfg.get("ckpt_path") else None
    if ckpt is not None and not ckpt.exists():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    if cfg.get("run"):
        run = Path(cfg.run).expanduser()
    elif ckpt is not None:
        run = ckpt.resolve().parent.parent  # <run>/checkpoints/<file>.ckpt
    else:
        raise ConfigError("eval.py needs run=<run directory> or ckpt_path=<checkpoint file>")
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"run={run}: not an lmforge run directory (no config.yaml in it)")
    if ckpt is None:
        ckpt = best_checkpoint(run)
    return run, ckpt


def best_checkpoint(run: Path) -> Path:
    metrics = run / "metrics.json"
    if metrics.is_file():
        best = json.loads(metrics.read_text()).get("best_checkpoint")
        if best and Path(best).exists():
            return Path(best)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)  # files or FSDP folders
    named = [p for p in ckpts if p.name != "last.ckpt"]
    if named or ckpts:
        return (named or ckpts)[-1]
    raise FileNotFoundError(f"run={run}: no checkpoint under {run / 'checkpoints'}; pass ckpt_path=<file>")


def load_run_config(run: Path, cfg: DictConfig, facts: dict) -> DictConfig:
    """The run's config, with eval.py's data changes, the checkpoint's label names and the run's tokenizer."""
    run_cfg = OmegaConf.load(run / "config.yaml")
    # a shared run folder's config must not name code to instantiate beyond lmforge's own targets
    check_run_config(run_cfg, run / "config.yaml", unsafe=bool(cfg.get("unsafe_load", False)))
    with open_dict(run_cfg):
        for k, v in (cfg.get("data") or {}).items():
            if v is not None:  # null: the run's own setting
                # data.max_eval_blocks=0: the whole split (null already means "the run's own setting" here)
                run_cfg.data[k] = None if k == "max_eval_blocks" and v == 0 else v
        if cfg.get("file"):
            run_cfg.data.eval_file = str(cfg.file)
        if facts.get("id2label"):
            id2label = {int(k): v for k, v in facts["id2label"].items()}
            run_cfg.data.label_names = [id2label[i] for i in sorted(id2label)]
        if facts.get("problem_type") == "regression" and "problem_type" in run_cfg.data:
            run_cfg.data.problem_type = "regression"  # an eval file of whole-number scores is still regression
        run_cfg.model.pretrained = False  # the architecture from the run; the weights come from the checkpoint
        export = run / "export"
        if (export / "tokenizer_config.json").is_file():  # the tokenizer the run trained with (or trained itself)
            run_cfg.model.tokenizer = str(export)
    return run_cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L

    from lmforge.utils.quiet import quiet
    from lmforge.utils.secrets import install_log_redaction

    quiet()
    install_log_redaction()
    from lmforge.faults import check_devices

    check_devices(cfg, key="devices", devices=cfg.get("devices"))  # before the checkpoint or any data is read
    from lmforge.serving import check_precision

    precision = check_precision((cfg.get("predict") or {}).get("precision", "auto"))  # before any model is loaded
    run, ckpt_path = find_run(cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("run %s, checkpoint %s", run, ckpt_path)
    ckpt = load_checkpoint_any(ckpt_path, unsafe=bool(cfg.get("unsafe_load", False)))  # a .ckpt file or an FSDP2 folder
    facts = ckpt.get("model_facts") or {}
    run_cfg = load_run_config(run, cfg, facts)
    run_cfg = student_run_config(run_cfg, run)  # a distilled run evaluates as the plain student task

    datamodule = build_datamodule(run_cfg)
    module = build_module(run_cfg, facts=facts)
    module.configure_model()
    module.load_state_dict(student_state_dict(ckpt["state_dict"]))
    del ckpt
    module.predict_precision = precision  # prediction only: the split's metrics keep the run's training precision

    metrics: dict[str, Any] = {}
    split = "file" if cfg.get("file") else cfg.get("split")
    if split:
        datamodule.prepare_data()
        datamodule.setup("test")
        available = datamodule.labelled_splits()
        if split not in available:
            raise DataError(f"split={split}: this run's data has no labelled {split} split "
                            f"(labelled: {', '.join(available) or 'none'}); pass file=<labelled file>")
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.devices, logger=False,
                            precision=run_cfg.trainer.get("precision", "32-true"), enable_checkpointing=False,
                            enable_model_summary=False, callbacks=[progress_bar()])
        module.stage_prefix = {**module.stage_prefix, "test": split}  # metrics named <split>/<metric>
        module.eval_output_dir = out  # the task's own evaluation files for this split
        trainer.test(module, dataloaders=datamodule.eval_dataloader(split), verbose=False)
        metrics = _floats(trainer.callback_metrics)
        print_metrics(metrics, f"{split} metrics ({cfg.get('file') or f'the run’s {split} split'})")
        metrics["split"] = split
        metrics["source"] = str(cfg.get("file") or split)

    inputs = list(cfg.predict.get("texts") or [])
    if cfg.predict.get("file"):
        inputs += datamodule.read_inputs(cfg.predict.file)
    if inputs:
        size = cfg.predict.get("batch_size")  # null: the task's default (64; 16 for generating tasks)
        records = module.predict(inputs, datamodule, **({"batch_size": int(size)} if size else {}))
        print_predictions(records, "predictions")
        stats = getattr(module, "predict_stats", None)
        if stats:  # texts/s of the last predict call (encoding included)
            from lmforge.serving import precision_note

            used = f", {precision_note(stats['precision'])}" if stats.get("precision") else ""
            print(f"predicted {stats['texts']} inputs in {stats['seconds']:.2f} s: "
                  f"{stats['texts_per_sec']:.1f} texts/s (batch {stats['batch_size']}{used})")
            metrics.update({f"predict/{k}": v for k, v in stats.items()})
        dest = Path(cfg.predict.output) if cfg.predict.get("output") else out / "predictions.jsonl"
        files = module.write_predictions(records, dest)
        log.info("wrote %d predictions to %s", len(records), ", ".join(map(str, files)))
        metrics["predictions_file"] = str(dest)
        metrics["predictions"] = records
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "predictions"}, indent=2))
    from lmforge.reports.run_report import write_eval_report

    write_eval_report(out, run, ckpt_path, {k: v for k, v in metrics.items() if k != "predictions"})
    return metrics


def print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
