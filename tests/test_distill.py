"""Knowledge distillation (issue 14): the frozen teacher, the losses, the student built from teacher layers,
the teacher cache, transfer texts, and a fast_dev_run of ``distill=logits`` with every task in configs/task.

Teachers are tiny models of the task, freshly built and saved as export folders (no training): cheap, and
exactly the thing ``distill.teacher=`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmforge.train as train_mod
from conftest import CONFIG_DIR, TINY, compose_cfg
from lmforge.distill.cache import example_keys
from lmforge.distill.teacher import check_compatible
from lmforge.train import build_datamodule, build_module, train
from lmforge.utils.errors import ConfigError

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
# tasks whose default model is the pretrained MiniLM: a tiny BERT (same vocabulary) keeps the tests cheap
ENCODER_TASKS = {"question_answering", "sentence_embedding", "text_classification", "token_classification"}
QUIET = ["extras.print_config=false", "predict.texts=null"]
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=1000", "trainer.check_val_every_n_epoch=null",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
         "callbacks.early_stopping=null", "data.batch_size=8"]


def model_overrides(task: str) -> list[str]:
    return ["model=bert", "model/size=tiny"] if task in ENCODER_TASKS else []


def make_teacher(base: Path, cache: Path, task: str, extra: list[str] = (), seed: int = 42) -> Path:
    """A freshly built (untrained) tiny model of ``task``, saved as an export folder."""
    folder = base / f"teacher_{task}_{seed}_{abs(hash(tuple(extra))) % 10**6}"
    if (folder / "config.json").is_file():
        return folder
    cfg = compose_cfg([f"task={task}", *model_overrides(task), *QUIET, f"seed={seed}", *extra], base / "t_run", cache)
    make_teacher_from(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def work(tmp_path_factory, cache_dir) -> Path:
    folder = tmp_path_factory.mktemp("distill")
    (folder / "cache").symlink_to(cache_dir)  # the session's token cache: samples other tests tokenized are reused
    return folder


@pytest.fixture(scope="module")
def cls_teacher(work) -> Path:
    """A 2-layer tiny BERT sentiment classifier (seed 7: not the student's weights)."""
    return make_teacher(work, work / "cache", "text_classification", seed=7)


def distilled(work: Path, overrides: list[str], task: str = "text_classification", name: str = "m"):
    """A configured distilled module (no trainer) and its datamodule."""
    cfg = compose_cfg([f"task={task}", *model_overrides(task), *QUIET, *overrides], work / name, work / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    return module, dm


def first_batch(dm) -> dict:
    """A labelled batch (a validation batch: masked LM masks its training batches only once on the device)."""
    loader = dm.val_dataloader() if "validation" in dm.labelled_splits() else dm.train_dataloader()
    return next(iter(loader))


# -- a whole run: the teacher stays frozen and out of checkpoint, optimizer and export ----------

@pytest.fixture(scope="module")
def distilled_run(work, cls_teacher):
    """A short run: student = teacher layer 1 of 2 (DistilBERT style), soft targets + labels."""
    captured = {}
    real = train_mod.build_module

    def capture(cfg, facts=None):
        captured["module"] = real(cfg, facts)
        return captured["module"]

    cfg = compose_cfg(["task=text_classification", *model_overrides("text_classification"), *QUIET, *STEPS,
                       "distill=logits", f"distill.teacher={cls_teacher}", "distill.student.init=teacher_layers",
                       "distill.student.layers=[1]"], work / "run", work / "cache")
    train_mod.build_module = capture
    try:
        metrics = train(cfg)
    finally:
        train_mod.build_module = real
    return cfg, metrics, captured["module"]


def test_teacher_weights_are_unchanged_by_training(distilled_run, cls_teacher):
    _, metrics, module = distilled_run
    saved = load_file(cls_teacher / "model.safetensors")
    now = module.teacher.state_dict()
    assert saved.keys() == now.keys()
    assert all(torch.equal(saved[k], now[k].cpu()) for k in saved)
    assert not module.teacher.training and not any(p.requires_grad for p in module.teacher.parameters())
    assert metrics["train/distill_kd"] > 0  # the student (1 layer) differs from the teacher (2 layers)


def test_teacher_is_not_in_checkpoint_optimizer_or_export(distilled_run):
    cfg, metrics, module = distilled_run
    run = Path(cfg.paths.output_dir)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    student = module.trainable()
    n_student = sum(1 for p in student.parameters() if p.requires_grad)
    (opt_state,) = ckpt["optimizer_states"]
    n_opt = sum(len(g["params"]) for g in opt_state["param_groups"])
    assert n_opt == n_student
    teacher_ids = {id(p) for p in module.teacher.parameters()}
    assert not teacher_ids & {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    exported = load_file(run / "export" / "model.safetensors")
    assert exported.keys() == student.state_dict().keys()
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1  # the student, served like any text-classification export
    assert metrics["params/total"] == sum(p.numel() for p in student.parameters())


def test_eval_loads_a_distilled_run_as_the_plain_student(distilled_run, work):
    from lmforge.evaluate import evaluate

    cfg, metrics, _ = distilled_run
    ecfg = compose_cfg([f"run={cfg.paths.output_dir}", "split=validation", "predict.texts=[a fine film]"],
                       work / "eval", work / "cache", config_name="eval")
    out = evaluate(ecfg)
    assert out["predictions"][0]["label"] in ("negative", "positive")
    assert "validation/accuracy" in out


def test_export_serves_like_the_task(distilled_run):
    from lmforge.tasks.text_classification.module import TextClassificationModule

    cfg, _, _ = distilled_run
    records = TextClassificationModule.serve(Path(cfg.paths.output_dir) / "export", ["a fine film"])
    assert records[0]["label"] in ("negative", "positive")


# -- losses ------------------------------------------------------------------------------------

def test_each_loss_is_zero_when_student_equals_teacher_and_positive_otherwise(work, cls_teacher):
    # every layer of the teacher, in order: the student is the teacher
    same, dm = distilled(work, ["distill=minilm", f"distill.teacher={cls_teacher}", "distill.weights.hidden=1",
                                "distill.student.init=teacher_layers", "distill.student.layers=[0,1]"])
    batch = first_batch(dm)
    same.eval()
    terms = same.distill_losses(batch)
    assert set(terms) == {"task", "kd", "hidden", "attention", "value"}
    for k in ("kd", "hidden", "attention", "value"):
        assert abs(float(terms[k])) < 1e-6, (k, terms)
    # another student: a narrower random BERT (seed 42, width 64): a projection maps its hidden states
    other, _ = distilled(work, ["distill=minilm", f"distill.teacher={cls_teacher}", "distill.weights.hidden=1",
                                "model.size.hidden_size=64", "model.size.intermediate_size=128"], name="o")
    other.eval()
    terms = other.distill_losses(batch)
    for k in ("kd", "hidden", "attention", "value"):
        assert float(terms[k]) > 1e-4, (k, terms)
    assert isinstance(other.distill_proj[0], torch.nn.Linear)  # widths 64 -> 128


def test_the_projection_trains_but_is_not_exported_and_transfer_texts_train_on_soft_targets(work, cls_teacher):
    texts = work / "transfer.txt"
    texts.write_text("an unlabelled sentence about a film\nanother one, longer than the first, about a play\n"
                     "a third\n")
    cfg = compose_cfg(["task=text_classification", *model_overrides("text_classification"), *QUIET, *STEPS,
                       "distill=hidden", f"distill.teacher={cls_teacher}", "model.size.hidden_size=64",
                       "model.size.intermediate_size=128", f"distill.transfer_file={texts}",
                       "distill.transfer_batch_size=2", "test=false"], work / "hidden_run", work / "cache")
    metrics = train(cfg)
    assert metrics["train/distill_hidden"] > 0 and metrics["train/distill_transfer_kd"] > 0
    run = Path(cfg.paths.output_dir)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("distill_proj.") for k in state)  # resumable
    assert not any("distill_proj" in k for k in load_file(run / "export" / "model.safetensors"))


def every_task_teacher(work: Path, task: str) -> tuple[Path, list[str]]:
    """A teacher of ``task`` with the same model config and seed as the student (so, the student's weights)."""
    teacher = work / f"same_teacher_{task}"
    overrides = [f"task={task}", *model_overrides(task), *QUIET, "data.batch_size=4"]
    if not (teacher / "config.json").is_file():
        make_teacher_from(compose_cfg(overrides, work / f"plain_{task}", work / "cache"), teacher)
    return teacher, overrides


def make_teacher_from(cfg, folder: Path) -> None:
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    plain = build_module(cfg, facts=dm.model_facts())
    plain.configure_model()
    plain.export(folder, tokenizer=dm.tokenizer)


@pytest.mark.parametrize("task", TASKS)
def test_soft_target_loss_of_every_task(work, task):
    """On a batch in eval mode, the soft-target loss is 0 when the student has the teacher's weights and positive
    once the student moves; a training step's gradients reach the student and never the teacher."""
    teacher, overrides = every_task_teacher(work, task)
    module, dm = distilled(work, [*overrides[1:], "distill=logits", f"distill.teacher={teacher}"], task=task,
                           name=f"zero_{task}")
    module.eval()
    batch = first_batch(dm)
    assert float(module.distill_losses(batch)["kd"]) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in module.trainable().parameters():
            p.add_(torch.randn_like(p) * 0.05)
    terms = module.distill_losses(batch)
    assert float(terms["kd"]) > 0 and set(terms) == {"task", "kd"}
    module.train()
    assert not module.teacher.training
    (terms["kd"] + terms["task"]).backward()
    assert any(p.grad is not None for p in module.trainable().parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


@pytest.mark.parametrize("task", TASKS)
def test_fast_dev_run_of_distill_logits_with_every_task(work, task):
    teacher, overrides = every_task_teacher(work, task)
    cfg = compose_cfg([*overrides, "debug=fdr", "test=false", "distill=logits", f"distill.teacher={teacher}"],
                      work / f"fdr_{task}", work / "cache")
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/distill_kd"]))


# -- student from teacher layers ---------------------------------------------------------------

def test_teacher_layers_copy_the_chosen_layers_embeddings_and_head(work):
    teacher_dir = make_teacher(work, work / "cache", "text_classification",
                               extra=["model.size.num_layers=4"], seed=3)
    module, _ = distilled(work, ["distill=logits", f"distill.teacher={teacher_dir}",
                                 "distill.student.init=teacher_layers", "distill.student.every=2"], name="layers")
    s, t = module.trainable(), module.teacher
    assert len(s.bert.encoder.layer) == 2 and len(t.bert.encoder.layer) == 4
    for i, j in enumerate([0, 2]):  # every 2nd from the first
        for (ks, vs), (kt, vt) in zip(s.bert.encoder.layer[i].state_dict().items(),
                                      t.bert.encoder.layer[j].state_dict().items()):
            assert ks == kt and torch.equal(vs, vt)
    assert not torch.equal(s.bert.encoder.layer[1].attention.self.query.weight,
                           t.bert.encoder.layer[1].attention.self.query.weight)
    assert torch.equal(s.bert.embeddings.word_embeddings.weight, t.bert.embeddings.word_embeddings.weight)
    assert torch.equal(s.classifier.weight, t.classifier.weight)
    assert torch.equal(s.bert.pooler.dense.weight, t.bert.pooler.dense.weight)
    with pytest.raises(ConfigError, match=r"distill.student.layers=\[0, 7\]"):
        distilled(work, ["distill=logits", f"distill.teacher={teacher_dir}", "distill.student.init=teacher_layers",
                         "distill.student.layers=[0,7]"], name="bad")


# -- mismatches are clear errors ---------------------------------------------------------------

def test_vocabulary_or_label_mismatch_names_both(work, cls_teacher):
    from transformers import AutoConfig

    t = AutoConfig.from_pretrained(cls_teacher)
    s = AutoConfig.from_pretrained(cls_teacher, vocab_size=100)
    with pytest.raises(ConfigError, match=r"vocabulary has 30522 tokens, the student's has 100"):
        check_compatible(s, t, "T")
    s = AutoConfig.from_pretrained(cls_teacher, id2label={0: "bad", 1: "good"})
    with pytest.raises(ConfigError, match=r"label set \['negative', 'positive'\] differs from the student's "
                                          r"\['bad', 'good'\]"):
        check_compatible(s, t, "T")
    with pytest.raises(ConfigError, match=r"distill.teacher=.*no such folder"):
        distilled(work, ["distill=logits", f"distill.teacher={work / 'nowhere'}"], name="none")


def test_a_missing_teacher_fails_before_any_data_is_read(work):
    from lmforge.utils.errors import LMForgeError  # what train.py prints as one line, without a traceback

    cfg = compose_cfg([*TINY, "distill=logits", f"distill.teacher={work / 'nowhere'}"], work / "cli", work / "cache")
    with pytest.raises(LMForgeError, match="no such folder"):
        train(cfg)


# -- teacher cache -----------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["text_classification", "token_classification"])
def test_cached_teacher_outputs_equal_fresh_ones(work, task):
    teacher = make_teacher(work, work / "cache", task, seed=5)
    module, dm = distilled(work, ["distill=logits", f"distill.teacher={teacher}", "distill.cache_teacher=true"],
                           task=task, name=f"cache_{task}")
    module.eval()  # no dropout in the student: the two losses below compare the teacher's outputs only
    examples = [dm.datasets["train"][i] for i in range(6)]
    a = dm.collate(examples[:4])
    module.teacher_outputs(a)  # computes and caches these 4
    assert len(module.teacher_cache) == 4
    # the same examples in another batch: other order, other padding
    b = dm.collate([examples[3], examples[1], examples[0], examples[2]])
    assert sorted(example_keys(b)) == sorted(example_keys(a))
    cached = module.teacher_outputs(b)
    assert module.teacher_cache.hits == 4
    fresh = module.teacher_forward(b)
    mask = module.distill_positions(b, fresh.logits) if fresh.logits.ndim == 3 else None
    if mask is None:
        torch.testing.assert_close(cached.logits, fresh.logits, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(cached.logits[mask], fresh.logits[mask], rtol=1e-5, atol=1e-5)
    s1 = module.distill_losses(b)["kd"]
    module.teacher_cache = None
    s2 = module.distill_losses(b)["kd"]
    assert float(s1) == pytest.approx(float(s2), abs=1e-5)
