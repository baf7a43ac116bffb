"""``evaluate(cfg) -> metrics``: re-evaluate a finished run, and predict on new text.

The model and data are rebuilt from the run's own saved config (``<run>/config.yaml``), never from
today's defaults; the weights come from the run's best checkpoint (or the one given). The facts the
model was built with (label names, vocabulary size) come from the checkpoint, so files with other
columns or a subset of the labels can be evaluated too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.data.sources import read_table
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


def load_run_config(run: Path, cfg: DictConfig) -> DictConfig:
    run_cfg = OmegaConf.load(run / "config.yaml")
    with open_dict(run_cfg):
        for k, v in (cfg.get("data") or {}).items():
            if v is not None:
                run_cfg.data[k] = v
        file = cfg.get("file")
        if file:
            run_cfg.data.source = "local"
            run_cfg.data.train_file = None
            run_cfg.data.validation_file = str(file)
            run_cfg.data.test_file = str(file)
            run_cfg.data.max_eval_samples = None
    return run_cfg


def read_texts(path: str | Path, text_column: str | None = None) -> list[str]:
    """Texts to predict: a table file (csv/tsv/jsonl/json/parquet, text column detected) or one text per line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"predict.file={path}: file not found")
    if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".ndjson"):
        from lmforge.tasks.text_classification.data import TEXT_COLUMNS

        rows = read_table(p, key="predict.file")
        if not rows:
            raise DataError(f"predict.file={path}: no rows")
        col = text_column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
        if col is None or col not in rows[0]:
            raise DataError(f"predict.file={path}: no text column among {', '.join(rows[0])}; set data.text_column=<name>")
        return [str(r[col]) for r in rows]
    texts = [line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()]
    return [t for t in texts if t.strip()]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    import lightning as L

    run, ckpt_path = find_run(cfg)
    run_cfg = load_run_config(run, cfg)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("run %s, checkpoint %s", run, ckpt_path)
    ckpt = load_checkpoint_any(ckpt_path)  # a .ckpt file, or an FSDP2 sharded checkpoint folder
    facts = ckpt.get("model_facts") or {}
    if facts.get("id2label"):
        with open_dict(run_cfg):
            run_cfg.data.label_names = [facts["id2label"][i] for i in sorted(facts["id2label"])]

    with open_dict(run_cfg):
        run_cfg.model.pretrained = False  # the architecture from the run; the weights come from the checkpoint
    datamodule = build_datamodule(run_cfg)
    module = build_module(run_cfg)
    module.fixed_facts = facts
    module.configure_model()
    module.load_state_dict(ckpt["state_dict"])
    metrics: dict[str, Any] = {}
    split = cfg.get("split")
    if split:
        if split not in ("train", "validation", "test"):
            raise ConfigError(f"split={split}: expected train, validation or test (or null to skip evaluation)")
        datamodule.prepare_data()
        trainer = L.Trainer(accelerator=cfg.accelerator, devices=cfg.devices, logger=False,
                            precision=run_cfg.trainer.get("precision", "32-true"), enable_checkpointing=False,
                            callbacks=[L.pytorch.callbacks.RichProgressBar()])
        datamodule.setup("test")
        # evaluate the requested split through the test loop, so metrics are named test/*
        if hasattr(datamodule, "datasets") and hasattr(datamodule, "_loader"):  # any split of a labelled table
            if split not in datamodule.datasets:
                raise DataError(f"split={split}: this run's data has no {split} split "
                                f"(has {', '.join(datamodule.datasets)}); pass file=<path>")
            datamodule.test_dataloader = lambda: datamodule._loader(split, False)  # type: ignore[method-assign]
        elif split == "validation":
            datamodule.test_dataloader = datamodule.val_dataloader  # type: ignore[method-assign]
        elif split == "train":
            raise ConfigError(f"split=train: a {run_cfg.task.name} run evaluates split=validation or split=test")
        trainer.test(module, datamodule=datamodule)
        metrics = {k.replace("test/", f"{split}/"): v for k, v in _floats(trainer.callback_metrics).items()}
        metrics["split"] = split
        metrics["source"] = str(cfg.get("file") or split)
    texts = list(cfg.predict.get("texts") or [])
    if cfg.predict.get("file"):
        texts += read_texts(cfg.predict.file, run_cfg.data.get("text_column"))
    if texts:
        if hasattr(module, "predict_texts"):
            preds = module.predict_texts(datamodule, texts)
        elif hasattr(module, "generate_texts"):  # causal LM: the texts are prompts
            preds = [{"text": t, "label": g, "score": float("nan")} for t, g in zip(texts, module.generate_texts(texts, tokenizer=datamodule.tokenizer))]
        else:
            raise ConfigError(f"predict.texts: a {run_cfg.task.name} model does not predict on text; "
                              "evaluate it with split=validation|test")
        print_predictions(preds)
        dest = Path(cfg.predict.output) if cfg.predict.get("output") else out / "predictions.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "w", encoding="utf-8") as f:
            for p in preds:
                f.write(json.dumps(p) + "\n")
        log.info("wrote %d predictions to %s", len(preds), dest)
        metrics["predictions_file"] = str(dest)
        metrics["predictions"] = preds
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "predictions"}, indent=2))
    return metrics
