"""Backbones from config: a pretrained checkpoint, or a family + size preset initialised at random.

``model`` config keys (see ``configs/model/``):
  family            bert | roberta | gpt2 | llama | t5 | bart (decides the HF config class)
  name_or_path      hub id or local folder to load pretrained weights from; null = random init
  tokenizer         hub id or local folder of the tokenizer (defaults to name_or_path)
  size              {num_layers, hidden_size, num_heads, intermediate_size} for random init
  max_position_embeddings, config_overrides, attn_implementation
  trust_remote_code false (default): never run Python files from a model's repository; true lets transformers
                    import the repository's own modeling/configuration code (logged once as a warning)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, PretrainedConfig

from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)

# generic size keys -> each family's HF config field names
FAMILY_FIELDS: dict[str, dict[str, str]] = {
    "bert": dict(num_layers="num_hidden_layers", hidden_size="hidden_size", num_heads="num_attention_heads",
                 intermediate_size="intermediate_size", max_position_embeddings="max_position_embeddings"),
    "roberta": dict(num_layers="num_hidden_layers", hidden_size="hidden_size", num_heads="num_attention_heads",
                    intermediate_size="intermediate_size", max_position_embeddings="max_position_embeddings"),
    "gpt2": dict(num_layers="n_layer", hidden_size="n_embd", num_heads="n_head",
                 intermediate_size="n_inner", max_position_embeddings="n_positions"),
    "llama": dict(num_layers="num_hidden_layers", hidden_size="hidden_size", num_heads="num_attention_heads",
                  intermediate_size="intermediate_size", max_position_embeddings="max_position_embeddings"),
}
FAMILY_FIELDS["t5"] = dict(num_layers="num_layers", hidden_size="d_model", num_heads="num_heads", intermediate_size="d_ff")
# BART: num_layers is each side's depth (encoder and decoder alike)
FAMILY_FIELDS["bart"] = dict(num_layers="encoder_layers", hidden_size="d_model", num_heads="encoder_attention_heads",
                             intermediate_size="encoder_ffn_dim", max_position_embeddings="max_position_embeddings")
MODEL_TYPE = {"bert": "bert", "roberta": "roberta", "gpt2": "gpt2", "llama": "llama", "t5": "t5", "bart": "bart"}
# encoder-decoder families: the published models' dimensions for a model/size name (each side's depth);
# where a family has no published model of that name, the generic preset's dimensions with this depth
FAMILY_PRESETS: dict[str, dict[str, dict[str, int]]] = {
    # T5-small (60M) and T5-base (220M), T5-large (770M)
    "t5": {"tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
           "small": dict(num_layers=6, hidden_size=512, num_heads=8, intermediate_size=2048),
           "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
           "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096)},
    # no BART-small was published: small is T5-small's width at 6 + 6 layers; base = BART-base (140M),
    # large = BART-large (400M)
    "bart": {"tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
             "small": dict(num_layers=6, hidden_size=512, num_heads=8, intermediate_size=2048),
             "base": dict(num_layers=6, hidden_size=768, num_heads=12, intermediate_size=3072),
             "large": dict(num_layers=12, hidden_size=1024, num_heads=16, intermediate_size=4096)},
}
# the decoder's copies of the encoder's size fields
DECODER_FIELDS = {"bart": {"encoder_layers": "decoder_layers", "encoder_attention_heads": "decoder_attention_heads",
                           "encoder_ffn_dim": "decoder_ffn_dim"},
                  "t5": {"num_layers": "num_decoder_layers"}}


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


_REMOTE_CODE_WARNED: set[str] = set()


def trust_remote_code(model_cfg: Mapping) -> bool:
    """``model.trust_remote_code`` (default false), as the ``trust_remote_code`` argument of every
    ``from_pretrained``/``from_config``; true logs once what it allows."""
    value = model_cfg.get("trust_remote_code", False)
    if value is None:
        value = False
    if not isinstance(value, bool):
        raise ConfigError(f"model.trust_remote_code={value!r}: expected true or false")
    if "trust_remote_code" in (model_cfg.get("config_overrides") or {}):
        raise ConfigError("model.config_overrides.trust_remote_code: not a config field; "
                          "set model.trust_remote_code=true to run a model repository's own code")
    source = str(model_cfg.get("name_or_path") or model_cfg.get("tokenizer") or model_cfg.get("family") or "the model")
    if value and source not in _REMOTE_CODE_WARNED:
        _REMOTE_CODE_WARNED.add(source)
        log.warning("model.trust_remote_code=true: transformers may import and run Python files "
                    "(configuration_*.py, modeling_*.py, tokenization_*.py) from the repository or folder of %s, "
                    "with your permissions. Use it only for repositories you trust, at a pinned revision.", source)
    return value


def is_pretrained(model_cfg: Mapping) -> bool:
    return bool(model_cfg.get("name_or_path")) and model_cfg.get("pretrained", True)


def tokenizer_source(model_cfg: Mapping, required: bool = True) -> str | None:
    """The tokenizer to load: ``model.tokenizer``, else ``model.name_or_path``.

    ``required=False`` (tasks that can train a tokenizer, e.g. pretraining) returns None when
    the model names none.
    """
    src = model_cfg.get("tokenizer") or model_cfg.get("name_or_path")
    if not src and not required:
        return None
    if not src:
        raise ConfigError(
            f"model={model_cfg.get('family')}: no tokenizer; set model.tokenizer=<hub id or folder> "
            "(or model.name_or_path for a pretrained model)"
        )
    return str(src)


# families whose learned position table keeps extra entries (RoBERTa numbers positions from padding_idx + 1)
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


def context_length(model_cfg: Mapping) -> int | None:
    """The longest sequence the model attends over, read without building it (None: no fixed limit)."""
    model_cfg = _plain(model_cfg)
    if model_cfg.get("name_or_path"):
        config = AutoConfig.from_pretrained(model_cfg["name_or_path"], trust_remote_code=trust_remote_code(model_cfg),
                                            **_plain(model_cfg.get("config_overrides")))
        family = config.model_type
        n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    else:
        family = model_cfg.get("family")
        n = model_cfg.get("max_position_embeddings")
    return None if n is None else int(n) - POSITION_OFFSET.get(str(family), 0)


def build_hf_config(model_cfg: Mapping, **facts: Any) -> PretrainedConfig:
    """The HF config for ``model_cfg``: loaded from the checkpoint, or built from family + size.

    ``facts`` are what the data knows (num_labels, id2label, vocab_size, pad_token_id, ...).
    """
    model_cfg = _plain(model_cfg)
    overrides = _plain(model_cfg.get("config_overrides"))
    if model_cfg.get("name_or_path"):  # the checkpoint's architecture (its weights only if pretrained)
        config = AutoConfig.from_pretrained(model_cfg["name_or_path"], trust_remote_code=trust_remote_code(model_cfg),
                                            **overrides)
    else:
        family = model_cfg.get("family")
        if family not in FAMILY_FIELDS:
            raise ConfigError(f"model.family={family}: expected one of {', '.join(FAMILY_FIELDS)}")
        size = _plain(model_cfg.get("size"))
        if not size:
            raise ConfigError(f"model={family} with model.name_or_path=null needs a size: add model/size=tiny|small|base|large")
        fields = FAMILY_FIELDS[family]
        preset = FAMILY_PRESETS.get(family, {}).get(str(size.get("name")))
        if preset:  # an encoder-decoder family's own dimensions for this size name
            size = {**size, **preset}
        values = {**size, "max_position_embeddings": model_cfg.get("max_position_embeddings")}
        kwargs = {fields[k]: v for k, v in values.items() if k in fields and v is not None}
        for enc, dec in DECODER_FIELDS.get(family, {}).items():
            if enc in kwargs:
                kwargs[dec] = kwargs[enc]
        config = AutoConfig.for_model(MODEL_TYPE[family], **kwargs, **overrides)
    for k, v in facts.items():
        if v is not None:
            setattr(config, k, v)
    if facts.get("id2label"):  # keep the two label maps consistent (and int-keyed)
        config.id2label = {int(i): str(n) for i, n in facts["id2label"].items()}
        config.label2id = {n: i for i, n in config.id2label.items()}
    return config


def build_model(auto_cls: Any, model_cfg: Mapping, **facts: Any) -> torch.nn.Module:
    """Instantiate ``auto_cls`` (an ``AutoModelFor...``) from ``model_cfg``, pretrained or at random."""
    model_cfg = _plain(model_cfg)
    config = build_hf_config(model_cfg, **facts)
    attn = model_cfg.get("attn_implementation") or "sdpa"
    remote = trust_remote_code(model_cfg)
    if is_pretrained(model_cfg):
        model = auto_cls.from_pretrained(model_cfg["name_or_path"], config=config, attn_implementation=attn,
                                         trust_remote_code=remote)
    else:
        model = auto_cls.from_config(config, attn_implementation=attn, trust_remote_code=remote)
    counts = parameter_counts(model)
    log.info("model %s: %s parameters (%s non-embedding)", type(model).__name__,
             f"{counts['total']:,}", f"{counts['non_embedding']:,}")
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Total and non-embedding parameters (token + position embeddings excluded; tied weights once)."""
    seen: set[int] = set()
    total = emb = 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if isinstance(module, torch.nn.Embedding):
                emb += p.numel()
    return {"total": total, "non_embedding": total - emb}
