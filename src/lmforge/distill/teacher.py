"""The teacher: where it comes from, how it is checked against the student, and the student built from its layers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from lmforge.utils.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_teacher(teacher: str | None) -> str:
    """``distill.teacher`` as something ``from_pretrained`` loads: a finished lmforge run directory (its
    ``export/``), an export folder or any local model folder, or a hub id."""
    if not teacher or str(teacher) == "???":
        raise ConfigError("distill.teacher is not set: name a finished lmforge run directory, an export folder, "
                          "a local model folder or a hub id, e.g. distill.teacher=logs/sst2/runs/<date>")
    p = Path(str(teacher)).expanduser()
    if p.is_dir():
        if (p / "export" / "config.json").is_file():
            return str((p / "export").resolve())
        if (p / "config.json").is_file():
            return str(p.resolve())
        raise ConfigError(f"distill.teacher={teacher}: the folder holds neither config.json nor export/config.json "
                          "(expected a finished lmforge run directory or a Hugging Face model folder)")
    if p.exists() or str(teacher).startswith((".", "/", "~")):
        raise ConfigError(f"distill.teacher={teacher}: no such folder")
    return str(teacher)  # a hub id


def load_teacher(auto_cls: Any, source: str, trust_remote_code: bool = False) -> nn.Module:
    """The teacher model, frozen: eval mode, no gradients."""
    try:
        model = auto_cls.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"distill.teacher={source}: cannot load it as {auto_cls.__name__} ({e})") from None
    model.eval()
    model.requires_grad_(False)
    return model


def check_compatible(student_config: Any, teacher_config: Any, teacher: str) -> None:
    """The teacher must predict over the student's vocabulary and label set."""
    sv, tv = _vocab(student_config), _vocab(teacher_config)
    if sv is not None and tv is not None and sv != tv:
        raise ConfigError(f"distill.teacher={teacher}: its vocabulary has {tv} tokens, the student's has {sv}; "
                          "teacher and student must share a tokenizer (pick a teacher trained with the student's "
                          "tokenizer, or set model.tokenizer to the teacher's)")
    sl, tl = _labels(student_config), _labels(teacher_config)
    if sl is not None and tl is not None and sl != tl:
        raise ConfigError(f"distill.teacher={teacher}: its label set {tl} differs from the student's {sl} "
                          "(the data's labels); distil on data with the teacher's labels (data.label_names=...)")


def _vocab(config: Any) -> int | None:
    config = getattr(config, "decoder", None) if getattr(config, "is_encoder_decoder", False) and \
        getattr(config, "decoder", None) is not None and getattr(config, "vocab_size", None) is None else config
    v = getattr(config, "vocab_size", None)
    return int(v) if v else None


def _labels(config: Any) -> list[str] | None:
    id2label = getattr(config, "id2label", None)
    if not id2label or getattr(config, "problem_type", None) == "regression":
        return None
    names = [str(id2label[i]) for i in sorted(int(k) for k in id2label)]
    if names == [f"LABEL_{i}" for i in range(len(names))]:  # transformers' placeholder names: no label set given
        return None
    return names


# -- student from the teacher's layers (DistilBERT) --------------------------------------------

def layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the ModuleList of the model's transformer layers (one stack; encoder-decoders are refused)."""
    n = getattr(model.config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if getattr(model.config, "is_encoder_decoder", False) or len(found) != 1:
        raise ConfigError(f"distill.student.init=teacher_layers: {type(model).__name__} has no single stack of "
                          f"{n} layers to take layers from (encoder-decoder models are not supported); use "
                          "distill.student.init=null with a smaller model config")
    return found[0]


def student_layers(n_teacher: int, layers: Sequence[int] | None, every: int | None) -> list[int]:
    """The teacher layers the student keeps: ``layers`` as given, or every ``every``-th from the first
    (``every=2`` of 6 layers: 0, 2, 4)."""
    if layers:
        chosen = [int(i) for i in layers]
    elif every:
        chosen = list(range(0, n_teacher, int(every)))
    else:
        raise ConfigError("distill.student.init=teacher_layers needs distill.student.layers=[0,2,4] "
                          "or distill.student.every=2")
    bad = [i for i in chosen if not 0 <= i < n_teacher]
    if bad or len(set(chosen)) != len(chosen):
        raise ConfigError(f"distill.student.layers={chosen}: expected distinct layer indices in 0..{n_teacher - 1} "
                          f"(the teacher has {n_teacher} layers)")
    return chosen


def model_width(config: Any) -> int:
    for k in ("hidden_size", "d_model", "n_embd", "dim"):
        v = getattr(config, k, None)
        if v:
            return int(v)
    raise ConfigError(f"distill: cannot read the hidden width of a {type(config).__name__}")


def attention_heads(config: Any) -> int:
    for k in ("num_attention_heads", "n_head", "num_heads"):
        v = getattr(config, k, None)
        if v:
            return int(v)
    raise ConfigError(f"distill: cannot read the attention heads of a {type(config).__name__}")


def is_causal(model: nn.Module) -> bool:
    """A decoder-only language model (its logit at t predicts token t+1)."""
    return type(model).__name__.endswith("ForCausalLM") or type(model).__name__ == "GPT2LMHeadModel"


def qkv_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The query, key and value projections of the last transformer layer (BERT/RoBERTa ``query/key/value``,
    LLaMA-style ``q_proj/k_proj/v_proj``)."""
    _, stack = layer_list(model)
    last = stack[-1]
    found: dict[str, nn.Module] = {}
    for name, m in last.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for role, names in (("q", ("query", "q_proj", "q_lin")), ("k", ("key", "k_proj", "k_lin")),
                            ("v", ("value", "v_proj", "v_lin"))):
            if leaf in names and isinstance(m, nn.Linear):
                found[role] = m
    if len(found) != 3:
        raise ConfigError(f"distill=minilm: the last layer of {type(model).__name__} has no separate query/key/value "
                          "projections (supported: BERT/RoBERTa/MiniLM, LLaMA-style q_proj/k_proj/v_proj)")
    return found
