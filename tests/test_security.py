"""Nothing lmforge loads may run code that lmforge did not ship (issue 8).

Crafted files carry an object whose ``__reduce__`` writes a marker file when unpickled: every loader must
refuse them with a message naming the file and the type, and the marker must not exist afterwards; the
unsafe path loads them (the marker then exists), which shows that the test could fail. lmforge's own
checkpoints of tiny runs load with the safe readers; caches are arrays and JSON; secrets stay out of
what a run writes.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_cfg, run_script
from lmforge.checkpoints import (UnsafeCheckpointError, UnsafeRunConfigError, check_run_config,
                                 fit_checkpoint_kwargs, load_checkpoint, read_dcp_metadata, verify_checkpoint)
from lmforge.data.cache import CACHE_VERSION, CacheError, Ragged, TokenCache
from lmforge.strategies import load_checkpoint_any
from lmforge.utils.errors import LMForgeError
from lmforge.utils.secrets import (REDACTED, install_log_redaction, is_secret_name, redact_config,
                                   redact_hydra_files, redact_override, redact_text)

QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]
TC = [*TINY, *QUIET, "trainer.max_epochs=1", "data.max_train_samples=64", "data.batch_size=16", "predict.texts=null"]
CAUSAL = ["task=causal_lm", *QUIET, "trainer.max_steps=3", "trainer.val_check_interval=3", "data.block_size=32",
          "data.batch_size=8", "data.max_eval_blocks=16", "data.tokenizer_training.vocab_size=600",
          "task.generation.max_new_tokens=4", "predict.texts=null"]


class RunsCode:
    """Unpickling this writes ``marker``: the kind of object a malicious checkpoint or cache would hold."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('this ran')",))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-looking checkpoint with code in its hyperparameters."""
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "epoch": 0, "global_step": 1,
                "hyper_parameters": {"model": RunsCode(marker)}}, path)
    return path


def refusal(call, *args) -> str:
    with pytest.raises(UnsafeCheckpointError) as info:
        call(*args)
    assert isinstance(info.value, LMForgeError)
    return str(info.value)


# -- checkpoints ---------------------------------------------------------------------------------------


def test_crafted_checkpoint_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "from_a_stranger.ckpt", marker)
    for loader in (load_checkpoint, load_checkpoint_any, verify_checkpoint, fit_checkpoint_kwargs):
        message = refusal(loader, ckpt)
        assert str(ckpt) in message and "builtins.exec" in message and "unsafe_load=true" in message, message
        assert not marker.exists(), loader.__name__
    assert load_checkpoint(ckpt, unsafe=True)["epoch"] == 0  # the trusted path unpickles it ...
    assert marker.read_text() == "this ran"  # ... and runs the code: the refusals above were real


def test_crafted_sharded_checkpoint_is_refused_without_running_it(tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "marker"
    folder = tmp_path / "last.ckpt"  # Lightning's FSDP2 layout: .metadata + __<rank>_0.distcp + meta.pt
    dcp.save({"state_dict": {"model.w": torch.ones(3)},
              "optimizer_0": {"param_groups": [{"lr": 0.1, "hook": RunsCode(marker)}]}},
             checkpoint_id=str(folder), no_dist=True)
    torch.save({"epoch": 0, "global_step": 2}, folder / "meta.pt")

    # code in a non-tensor value of a .distcp file (which torch's own reader unpickles with weights_only=False)
    message = refusal(verify_checkpoint, folder)
    assert "__0_0.distcp" in message and "optimizer_0.param_groups.0.hook" in message and "builtins.exec" in message
    assert torch.equal(load_checkpoint(folder)["state_dict"]["model.w"], torch.ones(3))  # weights only: never read
    assert not marker.exists()

    # code in .metadata (which torch's reader unpickles with plain pickle.load)
    good_metadata = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    for loader in (load_checkpoint, load_checkpoint_any, verify_checkpoint):
        message = refusal(loader, folder)
        assert str(folder / ".metadata") in message and "builtins.exec" in message and "unsafe_load=true" in message
    assert not marker.exists()

    # code in meta.pt
    (folder / ".metadata").write_bytes(good_metadata)
    crafted_checkpoint(folder / "meta.pt", marker)
    for loader in (load_checkpoint, verify_checkpoint):
        message = refusal(loader, folder)
        assert str(folder / "meta.pt") in message and "builtins.exec" in message
    assert not marker.exists()
    load_checkpoint(folder, unsafe=True)
    assert marker.exists()


def test_sharded_metadata_reader_allows_only_metadata_types(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import Metadata

    dcp.save({"state_dict": {"w": torch.ones(2, 3, dtype=torch.bfloat16)}}, checkpoint_id=str(tmp_path / "c"),
             no_dist=True)
    meta = read_dcp_metadata(tmp_path / "c" / ".metadata")
    assert isinstance(meta, Metadata) and meta.state_dict_metadata["state_dict.w"].properties.dtype == torch.bfloat16
    (tmp_path / "c" / ".metadata").write_bytes(pickle.dumps({"ok": [1, 2], "bad": io.BytesIO}))
    assert "_io.BytesIO" in refusal(read_dcp_metadata, tmp_path / "c" / ".metadata")


# -- lmforge's own checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tc_run(tmp_path_factory):
    from lmforge.train import train

    base = tmp_path_factory.mktemp("security_tc")
    train(compose_cfg(TC, base / "run", base / "cache"))
    return base / "run", base / "cache"


def _assert_loads_safely(ckpt: Path) -> dict:
    from lightning.fabric.utilities.cloud_io import _load as lightning_load

    if ckpt.is_file():  # no type beyond torch's weights_only defaults
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == []
        lightning_load(ckpt, map_location="cpu", weights_only=True)  # what trainer.fit(..., weights_only=True) reads
    verify_checkpoint(ckpt)
    assert fit_checkpoint_kwargs(ckpt) == {"ckpt_path": str(ckpt), "weights_only": True}
    state = load_checkpoint(ckpt)
    assert state["state_dict"] and all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())
    assert state["model_facts"] and "hyper_parameters" in state
    return state


def test_own_text_classification_checkpoints_load_safely(tc_run):
    run, _ = tc_run
    pickles = [f for f in (run / "export").rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
    assert not pickles and (run / "export" / "model.safetensors").is_file()  # the export is safe to share
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 2  # best and last
    for ckpt in ckpts:
        state = _assert_loads_safely(ckpt)
        assert state["model_facts"]["id2label"]


def test_own_causal_lm_checkpoint_loads_safely(tmp_path):
    from lmforge.train import train

    train(compose_cfg(CAUSAL, tmp_path / "run", tmp_path / "cache"))
    for ckpt in sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt")):
        _assert_loads_safely(ckpt)


def test_train_refuses_a_crafted_resume_checkpoint(tmp_path):
    from lmforge.train import train

    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "shared.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"shared\.ckpt.*builtins\.exec.*unsafe_load=true"):
        train(compose_cfg([*TC, f"ckpt_path={ckpt}"], tmp_path / "run", tmp_path / "cache"))
    assert not marker.exists()


def test_eval_refuses_a_crafted_checkpoint_in_a_run_folder(tc_run, tmp_path):
    from lmforge.evaluate import evaluate

    run, cache = tc_run
    shared = tmp_path / "shared_run"
    shutil.copytree(run, shared)
    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(shared / "checkpoints" / "best.ckpt", marker)
    cfg = compose_cfg([f"ckpt_path={ckpt}", "split=null"], tmp_path / "eval", cache, config_name="eval")
    with pytest.raises(UnsafeCheckpointError, match=r"best\.ckpt.*builtins\.exec.*unsafe_load=true"):
        evaluate(cfg)
    assert not marker.exists()


def crafted_run_folder(run: Path, folder: Path, marker: Path) -> Path:
    """A copy of a real run whose config.yaml makes Hydra call ``torch.hub.load`` on a hubconf.py beside it:
    a callable Hydra's own target blocklist lets through, which imports (runs) a Python file."""
    shutil.copytree(run, folder)
    (folder / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('this ran')\ndef x(*a, **k):\n    return None\n")
    cfg = OmegaConf.load(folder / "config.yaml")
    cfg.task.datamodule = {"_target_": "torch.hub.load", "repo_or_dir": str(folder), "model": "x"}
    cfg.data.source = "local"  # the run's data keys are passed as arguments too
    OmegaConf.save(cfg, folder / "config.yaml")
    return folder


def test_run_configs_may_only_name_lmforges_targets(tc_run, tmp_path, caplog):
    run, _ = tc_run
    check_run_config(OmegaConf.load(run / "config.yaml"), run / "config.yaml")  # lmforge's own run: fine
    bad = crafted_run_folder(run, tmp_path / "shared_run", tmp_path / "marker")
    cfg = OmegaConf.load(bad / "config.yaml")
    cfg.model.trust_remote_code = True
    with pytest.raises(UnsafeRunConfigError, match=r"task\.datamodule\._target_=torch\.hub\.load.*"
                                                   r"model\.trust_remote_code=true.*unsafe_load=true"):
        check_run_config(cfg, bad / "config.yaml")
    cfg.task.datamodule._target_ = "torch.optim.optimizer.torch.load"  # attribute chains do not pass as torch.optim
    with pytest.raises(UnsafeRunConfigError, match="torch.optim.optimizer.torch.load"):
        check_run_config(cfg, bad / "config.yaml")
    with caplog.at_level(logging.WARNING, logger="lmforge.checkpoints"):
        check_run_config(cfg, bad / "config.yaml", unsafe=True)
    assert "unsafe_load=true" in caplog.text
    assert not (tmp_path / "marker").exists()


def test_eval_refuses_a_run_folder_whose_config_runs_code(tc_run, tmp_path):
    from lmforge.evaluate import evaluate

    run, cache = tc_run
    marker = tmp_path / "marker"
    shared = crafted_run_folder(run, tmp_path / "shared_run", marker)
    cfg = compose_cfg([f"run={shared}", "split=null"], tmp_path / "eval", cache, config_name="eval")
    with pytest.raises(UnsafeRunConfigError, match=r"config\.yaml.*torch\.hub\.load"):
        evaluate(cfg)
    assert not marker.exists()


@pytest.mark.slow
def test_own_fsdp2_sharded_checkpoint_loads_safely_and_resumes(tmp_path):
    common = [*TC, "strategy=fsdp", "accelerator=cpu", "trainer.devices=2", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_script(["train.py", *common, f"hydra.run.dir={tmp_path / 'run'}"])
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert (folder / "meta.pt").is_file() and (folder / ".metadata").is_file()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(folder / "meta.pt")) == []
    state = _assert_loads_safely(folder)
    trusted = load_checkpoint(folder, unsafe=True)
    assert state["state_dict"].keys() == trusted["state_dict"].keys()
    assert all(torch.equal(state["state_dict"][k], trusted["state_dict"][k]) for k in state["state_dict"])
    run_script(["train.py", *common, "trainer.max_epochs=2", f"ckpt_path={folder}",
                f"hydra.run.dir={tmp_path / 'resumed'}"])
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())


# -- token caches ----------------------------------------------------------------------------------------


def test_cache_round_trips_ragged_and_dense_arrays(tmp_path):
    cache = TokenCache(tmp_path, "ns", "key")
    ids = [np.arange(n, dtype=np.int32) for n in (3, 0, 5, 1)]
    blocks = np.arange(24, dtype=np.int32).reshape(4, 6)
    cache.save("train", {"input_ids": ids, "labels": np.array([0, 1, 1, 0]), "scores": np.array([0.5, 1.5], np.float32),
                         "blocks": blocks, "empty": [], "note": {"rows": 4}})
    cache.save_meta({"sizes": {"train": 4}})
    assert cache.has(["train"]) and not cache.has(["train", "validation"])
    assert not list(cache.dir.glob("*.pt")) and not list(cache.dir.glob("*.pkl"))
    data = cache.load("train")
    r = data["input_ids"]
    assert isinstance(r, Ragged) and len(r) == 4 and [len(x) for x in r] == [3, 0, 5, 1]
    assert all(np.array_equal(a, b) and a.dtype == np.int32 for a, b in zip(r, ids))
    assert np.array_equal(r[-2], ids[2]) and [len(x) for x in r[1:3]] == [0, 5]
    assert r.lengths().tolist() == [3, 0, 5, 1]
    assert np.array_equal(data["blocks"], blocks) and data["blocks"].dtype == np.int32
    assert data["labels"].tolist() == [0, 1, 1, 0] and data["scores"].dtype == np.float32
    assert data["note"] == {"rows": 4} and cache.load_meta() == {"sizes": {"train": 4}}
    data["blocks"][0, 0] = -1  # copy-on-write: the file is untouched
    assert cache.load("train")["blocks"][0, 0] == 0
    with pytest.raises(CacheError, match="object"):
        cache.save("bad", {"x": np.array([object()], dtype=object)})


def test_crafted_cache_entries_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "marker"
    cache = TokenCache(tmp_path, "ns", "key")
    good = {"input_ids": [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.int32)], "labels": np.array([0, 1])}
    cache.save("train", good)
    cache.save_meta({})
    assert cache.has(["train"])
    # a pickle where an array should be
    (cache.dir / "train.input_ids.values.npy").write_bytes(pickle.dumps(RunsCode(marker)))
    assert not cache.has(["train"])
    with pytest.raises(CacheError, match=r"train\.input_ids\.values\.npy"):
        cache.load("train")
    # an object-dtype .npy (np.load would unpickle it with allow_pickle=True), even with a manifest that agrees
    cache.save("train", good)
    np.save(cache.dir / "train.labels.npy", np.array([RunsCode(marker)], dtype=object), allow_pickle=True)
    manifest = json.loads((cache.dir / "train.json").read_text())
    manifest["entries"]["labels"]["dtype"] = "|O"
    (cache.dir / "train.json").write_text(json.dumps(manifest))
    assert not cache.has(["train"])
    with pytest.raises(CacheError, match=r"train\.labels\.npy: holds object values"):
        cache.load("train")
    # an old-format entry (a torch.save pickle per split) is never read
    old = TokenCache(tmp_path, "ns", "old")
    old.dir.mkdir(parents=True)
    torch.save({"input_ids": RunsCode(marker)}, old.dir / "train.pt")
    (old.dir / "meta.json").write_text("{}")
    assert not old.has(["train"])
    assert not marker.exists()
    cache.save("train", good)  # what the datamodule does when has() is false: rebuild
    assert cache.has(["train"]) and cache.load("train")["labels"].tolist() == [0, 1]
    assert CACHE_VERSION >= 2


def test_datamodule_rebuilds_a_crafted_cache_entry(tc_run, tmp_path):
    from lmforge.train import train

    run, cache = tc_run
    marker = tmp_path / "marker"
    arrays = sorted(cache.rglob("train.input_ids.values.npy"))
    assert arrays, "the text classification run cached its tokens as .npy arrays"
    for f in arrays:
        f.write_bytes(pickle.dumps(RunsCode(marker)))
    metrics = train(compose_cfg(TC, tmp_path / "again", cache))
    assert "test/accuracy" in metrics
    assert not marker.exists()
    for f in arrays:  # rebuilt as data
        assert np.load(f, allow_pickle=False).dtype.kind in "iu"


# -- remote code -----------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_asked_and_warns_once(tmp_path, monkeypatch, caplog):
    from transformers import AutoConfig

    import lmforge.models.factory as factory
    from lmforge.utils.errors import ConfigError

    for model in ("bert", "gpt2", "llama", "roberta", "minilm", "hf"):
        cfg = compose_cfg([f"model={model}", "model.name_or_path=x"] if model == "hf" else [f"model={model}"],
                          tmp_path / model, tmp_path / "cache")
        assert cfg.model.trust_remote_code is False, model

    seen = []
    real = factory.AutoConfig

    class Recorder:
        @staticmethod
        def from_pretrained(name, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return AutoConfig.for_model("bert", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                        intermediate_size=64)

        for_model = staticmethod(real.for_model)

    monkeypatch.setattr(factory, "AutoConfig", Recorder)
    base = {"name_or_path": "someone/with-code", "config_overrides": {}}
    factory.build_hf_config(base)
    assert seen == [False]
    with caplog.at_level(logging.WARNING, logger="lmforge.models.factory"):
        factory.build_hf_config({**base, "trust_remote_code": True})
        factory.context_length({**base, "trust_remote_code": True})
    assert seen[1:] == [True, True]
    warnings = [r for r in caplog.records if "trust_remote_code" in r.getMessage()]
    assert len(warnings) == 1 and "run Python files" in warnings[0].getMessage()
    with pytest.raises(ConfigError, match="model.trust_remote_code"):
        factory.build_hf_config({**base, "config_overrides": {"trust_remote_code": True}})


# -- secrets ---------------------------------------------------------------------------------------------


WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
SERVICE_TOKEN = "svc-tok-5f3a9c1e7b"


def test_secret_names():
    for name in ("WANDB_API_KEY", "HF_TOKEN", "MY_SERVICE_TOKEN", "api_key", "apiKey", "AWS_SECRET_ACCESS_KEY",
                 "db_password", "client_secret", "key", "token"):
        assert is_secret_name(name), name
    for name in ("tokenizer", "tokenizer_training", "max_new_tokens", "pad_token_id", "TOKENIZERS_PARALLELISM",
                 "monitor", "name_or_path", "PWD", "keyboard"):
        assert not is_secret_name(name), name


def test_redact_config_removes_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", SERVICE_TOKEN)
    cfg = compose_cfg([*TC, "+logger_extra.service=${oc.env:MY_SERVICE_TOKEN}",
                       "+logger_extra.url=https://user:${oc.env:WANDB_API_KEY}@example.org/x",
                       "+logger_extra.api_key=typed-on-the-command-line",
                       "+logger_extra.hub=hf_abcdefghijklmnopqrstuvwxyz0123456789"],
                      tmp_path / "run", tmp_path / "cache")
    text = OmegaConf.to_yaml(redact_config(cfg))
    for secret in (WANDB_KEY, SERVICE_TOKEN, "typed-on-the-command-line", "hf_abcdefghijklmnopqrstuvwxyz"):
        assert secret not in text
    red = redact_config(cfg)
    assert red.logger_extra.service == REDACTED and red.logger_extra.api_key == REDACTED
    assert red.logger_extra.url == f"https://user:{REDACTED}@example.org/x"
    assert red.model.tokenizer == OmegaConf.select(cfg, "model.tokenizer")  # lmforge's own keys survive
    assert OmegaConf.select(cfg, "logger_extra.service") == SERVICE_TOKEN  # the run's own config is untouched
    assert redact_text(f"key={WANDB_KEY}!") == f"key={REDACTED}!"


def test_overrides_and_hydra_copies_are_redacted(monkeypatch, tmp_path):
    import yaml

    monkeypatch.setenv("MY_SERVICE_TOKEN", SERVICE_TOKEN)
    assert redact_override("+logger.wandb.api_key=typed-secret") == f"+logger.wandb.api_key={REDACTED}"
    assert redact_override("data.tokenizer=bert-base-uncased") == "data.tokenizer=bert-base-uncased"
    assert redact_override("x.key=${oc.env:MY_SERVICE_TOKEN}") == "x.key=${oc.env:MY_SERVICE_TOKEN}"
    assert redact_override(f"a=1,notes={SERVICE_TOKEN},b.password=hunter22") == f"a=1,notes={REDACTED},b.password={REDACTED}"
    hydra_dir = tmp_path / ".hydra"  # what Hydra writes into the run directory before the job starts
    hydra_dir.mkdir()
    overrides = ["model=bert", "+logger_extra.api_key=typed-secret", "+x.svc=${oc.env:MY_SERVICE_TOKEN}"]
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"tokenizer": "t"},
                                                           "logger_extra": {"api_key": "typed-secret"}}))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": overrides},
                                                                    "job": {"override_dirname": ",".join(overrides)}}}))
    assert len(redact_hydra_files(tmp_path)) == 3
    for f in hydra_dir.iterdir():
        assert "typed-secret" not in f.read_text(), f
    assert yaml.safe_load((hydra_dir / "config.yaml").read_text())["model"] == {"tokenizer": "t"}
    assert redact_hydra_files(tmp_path) == []


def test_log_records_are_redacted(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", SERVICE_TOKEN)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    lg = logging.getLogger("lmforge.test_security")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        install_log_redaction([lg])
        install_log_redaction([lg])  # idempotent
        assert len(handler.filters) == 1
        lg.warning("connecting with %s", SERVICE_TOKEN)
        try:
            raise RuntimeError(f"auth failed for {SERVICE_TOKEN}")
        except RuntimeError:
            lg.exception("upload failed")
    finally:
        lg.removeHandler(handler)
        lg.propagate = True
    out = stream.getvalue()
    assert SERVICE_TOKEN not in out and out.count(REDACTED) >= 2 and "auth failed for" in out


def test_secrets_stay_out_of_the_run_directory(monkeypatch, tmp_path):
    from lmforge.train import train

    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", SERVICE_TOKEN)
    run = tmp_path / "run"
    cfg = compose_cfg([*TC, "+logger_extra.service=${oc.env:MY_SERVICE_TOKEN}",
                       "+logger_extra.api_key=${oc.env:WANDB_API_KEY}"], run, tmp_path / "cache")
    with open_dict(cfg):
        cfg.extras.print_config = True  # compose turns it off; the config tree is one of the artifacts checked
    train(cfg)
    assert (run / "config.yaml").is_file() and (run / "config_tree.log").is_file()
    for f in run.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert WANDB_KEY.encode() not in data and SERVICE_TOKEN.encode() not in data, f
