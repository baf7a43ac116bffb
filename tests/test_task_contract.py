"""Every task in configs/task/ provides the whole task contract (tasks/base.py, data/datamodule.py).

The test knows no task by name: it walks configs/task/*.yaml. For each task one short shared run
(4 optimizer steps, validation forced at the end) is reused by the checks below: it trains, validates,
exports, predicts its ``task.examples``, and the export serves the same predictions the way the task
declares (``transformers.pipeline`` or the task's own predictor) with the export folder alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import hydra
import pytest
import torch

from conftest import CONFIG_DIR, compose_cfg
from lmforge.train import build_datamodule, build_module, metric_value, train

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
# the shortest real run: 4 steps, a validation at the end (the interval is never reached), greedy decoding
SHORT = ["trainer.max_steps=4", "trainer.val_check_interval=1000", "trainer.check_val_every_n_epoch=null",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
         "extras.print_config=false"]


def _greedy(cfg) -> list[str]:
    # 16 new tokens are enough to compare lmforge's text with the served one: fewer tokens only shorten the run
    return ["task.generation.do_sample=false", "task.generation.max_new_tokens=16"] if "generation" in cfg.task else []


class _Runs(dict):
    """One short run per task, made when a check first asks for it (``-k <task>`` trains that task only)."""

    def __init__(self, base: Path):
        super().__init__()
        self.base = base

    def __missing__(self, task: str):
        probe = compose_cfg([f"task={task}"], self.base / "probe", self.base / "cache")
        cfg = compose_cfg([f"task={task}", *SHORT, *_greedy(probe)], self.base / task, self.base / "cache")
        self[task] = (cfg, train(cfg))
        return self[task]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per task, shared by the checks below."""
    return _Runs(tmp_path_factory.mktemp("contract"))


def test_there_are_tasks():
    assert {"text_classification", "causal_lm", "masked_lm"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_a_run_ending_before_its_first_validation_still_has_its_metric(runs, task):
    cfg, metrics = runs[task]
    value = metric_value(metrics, cfg.optimized_metric)
    assert value is not None and math.isfinite(value), (cfg.optimized_metric, metrics)
    assert Path(cfg.paths.output_dir, "checkpoints", "last.ckpt").is_file()


@pytest.mark.parametrize("task", TASKS)
def test_predictions_have_the_declared_fields_and_are_strict_json(runs, task):
    cfg, _ = runs[task]
    module_cls = hydra.utils.get_class(cfg.task.module._target_)
    lines = Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}")) for line in lines]
    assert len(records) == len(cfg.task.examples) > 0
    for rec, example in zip(records, cfg.task.examples):
        for field in module_cls.prediction_fields:
            assert field in rec, (field, rec)
        # the input is echoed beside the prediction: a text as a value, a record (QA) field by field
        assert example in rec.values() or (isinstance(example, Mapping)
                                           and all(rec.get(k) == v for k, v in example.items()))


@pytest.mark.parametrize("task", TASKS)
def test_export_serves_the_same_predictions_outside_lmforge(runs, task):
    cfg, _ = runs[task]
    module_cls = hydra.utils.get_class(cfg.task.module._target_)
    run = Path(cfg.paths.output_dir)
    ours = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    options = {k: v for k, v in cfg.task.module.items() if k != "_target_"}
    served = module_cls.serve(run / "export", list(cfg.task.examples), **options)
    assert len(served) == len(ours)
    for theirs, mine in zip(served, ours):
        for field in module_cls.prediction_fields:
            assert _close(theirs[field], mine[field]), (field, theirs[field], mine[field])


def _close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-4
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("task", TASKS)
def test_the_module_predicts_what_the_run_wrote(runs, task):
    """predict() on a module rebuilt from the run's export gives the run's own predictions."""
    cfg, _ = runs[task]
    run = Path(cfg.paths.output_dir)
    ours = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    from transformers import AutoConfig

    state = type(module.trainable()).from_pretrained(run / "export", config=AutoConfig.from_pretrained(run / "export"))
    module.trainable().load_state_dict(state.state_dict())
    again = module.predict(list(cfg.task.examples), dm)
    assert all(_close(a, b) for a, b in zip(again, ours)), (again, ours)


DEBUG = sorted(p.stem for p in (CONFIG_DIR / "debug").glob("*.yaml"))


def _pretrained_default(task: str) -> bool:
    """Whether the task's default model is a pretrained checkpoint (MiniLM: no size preset) rather than a tiny preset."""
    cfg = compose_cfg([f"task={task}"], Path("/nonexistent-run"), Path("/nonexistent-cache"))
    return cfg.model.get("size") is None


# appended only to shorten: each debug option keeps its own meaning
SHRINK = {"overfit": ["trainer.max_epochs=2", "trainer.max_steps=4"], "limit": ["trainer.max_steps=4"],
          "profiler": ["trainer.max_steps=4", "trainer.limit_val_batches=2"], "fdr": []}


# the fast subset runs debug=fdr with every task but these, whose debug=fdr other fast tests run
# (test_seq2seq_train.py::test_fast_dev_run_for_every_model, test_question_answering.py); the rest is slow
FDR_ELSEWHERE = {"translation", "summarization", "question_answering"}


@pytest.mark.parametrize("debug,task", [
    pytest.param(d, t, id=f"{d}-{t}", marks=[] if d == "fdr" and t not in FDR_ELSEWHERE else [pytest.mark.slow])
    for d in DEBUG for t in TASKS])
def test_every_debug_option_works_with_every_task(make_cfg, task, debug):
    # a debug option is about the loops, not the weights: the tasks whose default is the pretrained MiniLM
    # (22M parameters, 4-40 s a run here) take the tiny BERT for all but debug=fdr, which keeps every default
    tiny = ["model=bert", "model/size=tiny"] if debug != "fdr" and _pretrained_default(task) else []
    cfg = make_cfg([f"task={task}", f"debug={debug}", *SHRINK.get(debug, ["trainer.max_steps=4"]), *tiny,
                    "extras.print_config=false", "predict.texts=null"], name=f"{task}-{debug}")
    assert not tiny or cfg.model.size.name == "tiny", cfg.model
    metrics = train(cfg)
    assert metrics["params/total"] > 0


def test_a_missing_capability_is_a_clear_error_not_an_attribute_error():
    from lmforge.tasks.base import TaskModule, as_records
    from lmforge.utils.errors import ConfigError

    class NoPredict(TaskModule):
        pass

    with pytest.raises(ConfigError, match="does not predict on raw inputs"):
        NoPredict({}, {}, {}).predict_batch({}, None)
    with pytest.raises(ConfigError, match="declares no way to serve"):
        NoPredict.serve("nowhere", ["x"])
    with pytest.raises(ConfigError, match="prediction input 1"):
        as_records([42], ("text",))


def test_optimizer_target_can_be_any_torch_optimizer(make_cfg):
    cfg = make_cfg(["task=causal_lm", "optimizer=sgd", "trainer.max_steps=2", "trainer.val_check_interval=1000",
                    "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "predict.texts=null",
                    "extras.print_config=false"])
    metrics = train(cfg)
    assert math.isfinite(metrics["val/loss"])
    from lmforge.tasks.base import build_optimizer

    p = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([("w", p), ("b", b)], {"_target_": "torch.optim.SGD", "lr": 0.1, "weight_decay": 0.5})
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]  # none on 1-D parameters


def test_integer_metric_values_are_logged_as_floats():
    """torchmetrics' MCC is an int64 tensor(1) for perfect predictions: logged as float32, so Lightning does not warn
    that the value "needs to be floating" (it did, in the README's first command's output)."""
    import torchmetrics

    from lmforge.tasks.base import loggable

    mcc = torchmetrics.MatthewsCorrCoef(task="multiclass", num_classes=2)
    mcc.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]))
    perfect = mcc.compute()
    assert loggable(perfect).dtype == torch.float32 and loggable(perfect).item() == 1.0
    assert loggable(torch.tensor(7)).dtype == torch.float32
    half = torch.tensor(0.5, dtype=torch.float16)
    assert loggable(half) is half and loggable(3.5) == 3.5
