"""Instruction tuning end to end: one short shared run of a tiny GPT-2 from scratch on part of the embedded sample
(the chat template round-trips through the export; ``pipeline("text-generation")`` given a list of messages
answers what lmforge predicted; eval.py answers a file of conversations), fast_dev_run packed, with Llama and with
LoRA, and (slow) DDP on 2 CPU processes, a causal-LM run's export as the starting point, and a real run on the
sample whose assistant-token validation loss falls to under a fifth of the untrained model's."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from conftest import compose_cfg, run_script
from lmforge.tasks.instruction_tuning.template import END, TEMPLATE
from lmforge.train import train

NEW = ["What is the opposite of cold?", "Which day comes after Friday?"]
DIALOGUE = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Hello!"},
                         {"role": "assistant", "content": "Hello! How can I help you today?"},
                         {"role": "user", "content": "What is the plural of mouse?"}]}
# a tiny GPT-2 on 128 conversations of the sample, one epoch (8 steps): quality is not the point here
SHORT = ["task=instruction_tuning", "extras.print_config=false", "data.max_train_samples=128", "data.max_eval_samples=16",
         "data.batch_size=16", "trainer.max_epochs=1", "task.generation.max_new_tokens=12", "task.val_generations=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("instruction_tuning")
    from omegaconf import OmegaConf

    cfg = compose_cfg(SHORT, base / "run", base / "cache")
    cfg.predict.texts = OmegaConf.create([*NEW, DIALOGUE])  # a conversation among the user messages
    metrics = train(cfg)
    return base, cfg, metrics


def _ours(cfg) -> list[dict]:
    return [json.loads(x) for x in Path(cfg.paths.output_dir, "predictions.jsonl").read_text().splitlines()]


def test_the_run_reports_assistant_token_loss_and_generations(run):
    _, cfg, metrics = run
    for k in ("val/loss", "val/perplexity", "val/accuracy", "test/loss"):
        assert math.isfinite(metrics[k]), k
    assert abs(metrics["val/perplexity"] - math.exp(metrics["val/loss"])) < 1e-3 * metrics["val/perplexity"]
    rows = [json.loads(x) for x in Path(cfg.paths.output_dir, "generations.jsonl").read_text().splitlines()]
    assert rows and {"prompt", "reference", "answer"} <= set(rows[0])


def test_the_chat_template_round_trips_through_the_export(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    _, cfg, _ = run
    folder = Path(cfg.paths.output_dir, "export")
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template == TEMPLATE
    msgs = DIALOGUE["messages"]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n"
        "<|assistant|>\nHello! How can I help you today?<|end|>\n<|user|>\nWhat is the plural of mouse?<|end|>\n"
        "<|assistant|>\n")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "<|system|>" and tok.decode(ids[1:2]) == "\n"  # single tokens there too
    end = tok.convert_tokens_to_ids(END)
    assert end in GenerationConfig.from_pretrained(folder).eos_token_id  # an answer stops at <|end|>
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.get_input_embeddings().num_embeddings == len(tok)


def test_the_text_generation_pipeline_answers_a_list_of_messages_as_lmforge_did(run):
    from transformers import pipeline

    _, cfg, _ = run
    ours = _ours(cfg)
    assert [r.get("text") for r in ours[:2]] == NEW and ours[2]["messages"] == DIALOGUE["messages"]
    pipe = pipeline("text-generation", model=str(Path(cfg.paths.output_dir, "export")), device="cpu")
    for record, x in zip(ours, [*NEW, DIALOGUE]):
        messages = [{"role": "user", "content": x}] if isinstance(x, str) else x["messages"]
        out = pipe(messages, max_new_tokens=12, do_sample=False)[0]["generated_text"]
        assert out[-1]["role"] == "assistant" and out[-1]["content"] == record["answer"]
    # the conversations file: each input with its answer as the assistant's turn
    conv = [json.loads(x) for x in Path(cfg.paths.output_dir, "conversations.jsonl").read_text().splitlines()]
    assert conv[2]["messages"] == DIALOGUE["messages"] + [{"role": "assistant", "content": ours[2]["answer"]}]


def test_eval_answers_a_file_of_conversations(run, tmp_path):
    from lmforge.evaluate import evaluate

    base, cfg, _ = run
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "reference"}]} for q in NEW]
    (tmp_path / "ask.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ecfg = compose_cfg([f"run={cfg.paths.output_dir}", "split=null", f"predict.file={tmp_path / 'ask.jsonl'}"],
                       tmp_path / "eval", base / "cache", config_name="eval")
    out = evaluate(ecfg)["predictions"]
    ours = _ours(cfg)
    assert [r["answer"] for r in out] == [r["answer"] for r in ours[:2]]
    assert [r["reference"] for r in out] == ["reference", "reference"]  # the file's own answers kept beside
    assert (tmp_path / "eval" / "conversations.jsonl").is_file()
    # eval.py's report: what it evaluated, no labelled data (split=null), its predictions and files
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"| run | {cfg.paths.output_dir} |" in report and "| labelled data | none (split=null) |" in report
    assert "_no metrics (no labelled data was evaluated)_" in report  # generation reports no prediction speed
    assert json.dumps(out[0]["messages"][0]["content"])[1:-1] in report  # the first prediction's line
    assert "- [conversations.jsonl](conversations.jsonl)" in report and "- [metrics.json](metrics.json)" in report


def test_eval_report_names_the_split_its_metrics_were_computed_on(run, tmp_path):
    from lmforge.evaluate import evaluate

    base, cfg, _ = run
    ecfg = compose_cfg([f"run={cfg.paths.output_dir}", "split=validation"], tmp_path / "eval", base / "cache",
                       config_name="eval")
    metrics = evaluate(ecfg)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| labelled data | the run's validation split |" in report and "(`validation/*`)" in report
    assert f"| validation/loss | {metrics['validation/loss']:.4g}" in report.replace("|  ", "| ")
    assert "test/" not in report and "## Predictions" not in report


@pytest.mark.parametrize("extra, batches", [
    (["data.packing=true", "data.assistant_only_loss=false"], "packed rows"),
    (["model=llama", "data.packing=true"], "packed rows"),
    ([], "padding-free, each batch's conversations in rows of at most 256 tokens"),
    (["model=llama"], "padding-free"),
    (["data.padding_free=false"], "one conversation per row, padded (data.padding_free=false)")],
    ids=["packed-whole-sequence", "llama-packed", "defaults", "llama-padding-free", "padded"])
def test_fast_dev_run(make_cfg, extra, batches, caplog):
    cfg = make_cfg(["task=instruction_tuning", "debug=fdr", *extra, "extras.print_config=false",
                    "task.generation.max_new_tokens=4", "predict.texts=null"])
    with caplog.at_level(logging.INFO, logger="lmforge.tasks.instruction_tuning.data"):
        assert train(cfg)["params/total"] > 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batches: ")]
    assert said and said[0].startswith(f"batches: {batches}"), said



def test_lora_trains_adapters_and_exports_merged_weights_and_the_adapter(make_cfg):
    from transformers import pipeline

    cfg = make_cfg(["task=instruction_tuning", "debug=fdr", "export=true", "task.lora.enabled=true",
                    "task.lora.save_adapter=true", "extras.print_config=false", "task.generation.max_new_tokens=6",
                    f"predict.texts={json.dumps(NEW[:1])}"])
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    assert metrics["params/total"] > 0
    answer = _ours(cfg)[0]["answer"]
    pipe = pipeline("text-generation", model=str(run / "export"), device="cpu")  # merged: no peft needed to serve
    out = pipe([{"role": "user", "content": NEW[0]}], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    assert out[-1]["content"] == answer
    assert (run / "export" / "adapter" / "adapter_config.json").is_file()
    assert not any("lora" in k for k in _safetensor_keys(run / "export" / "model.safetensors"))
    assert all("lora" in k for k in _safetensor_keys(run / "export" / "adapter" / "adapter_model.safetensors"))


def _safetensor_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


@pytest.mark.slow
def test_starts_from_a_causal_lm_runs_export(make_cfg):
    """A finished causal-LM run's export (no chat template): lmforge's markers are added to its tokenizer and its
    embeddings grow to match."""
    lm = make_cfg(["task=causal_lm", "debug=fdr", "export=true", "extras.print_config=false", "predict.texts=null"],
                  name="lm")
    train(lm)
    export = Path(lm.paths.output_dir, "export")
    cfg = make_cfg(["task=instruction_tuning", "debug=fdr", "export=true", f"model.name_or_path={export}",
                    "extras.print_config=false", "task.generation.max_new_tokens=4"], name="sft")
    train(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(cfg.paths.output_dir, "export"))
    base = AutoTokenizer.from_pretrained(export)
    assert len(tok) == len(base) + 4 and tok.chat_template == TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(Path(cfg.paths.output_dir, "export"))
    assert model.get_input_embeddings().num_embeddings == len(tok)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_packed(tmp_path):
    run_script(["train.py", "task=instruction_tuning", "strategy=ddp", "accelerator=cpu", "trainer.devices=2",
                "trainer.max_steps=4", "trainer.max_epochs=-1", "trainer.val_check_interval=1000",
                "trainer.check_val_every_n_epoch=null", "data.max_eval_samples=32", "data.packing=true",
                "task.generation.max_new_tokens=8", "extras.print_config=false",
                f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2.0 and math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["test/loss"])


@pytest.mark.slow
def test_a_real_run_on_the_sample_learns_the_answers(tmp_path):
    """One epoch of the embedded sample (94 steps; 75 s on 2 CPU cores shared with other jobs): the validation
    loss on the assistant's tokens falls to under a fifth of the untrained model's (measured 2026-12-01: 6.93,
    about ln(vocabulary), -> 0.74)."""
    import lightning as L

    from lmforge.train import build_datamodule, build_module

    cfg = compose_cfg(["task=instruction_tuning", "trainer.max_epochs=1", "extras.print_config=false",
                       "export=false", "test=false", "predict.texts=null"], tmp_path / "run", tmp_path / "cache")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, facts=dm.model_facts())
    module.configure_model()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path / "untrained")
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    after = train(cfg)["val/loss"]
    print(f"assistant-token validation loss: untrained {before:.3f}, after one epoch {after:.3f}")
    assert after < before / 5, (before, after)
