"""Keep secrets out of what a run writes: the saved config, the config tree, logger hyperparameters, logs.

A secret is

* a value under a key whose name says so: its last word is KEY, TOKEN, SECRET or PASSWORD (or it has the
  word SECRET or PASSWORD anywhere), case-insensitive, words split at ``_``, ``-``, ``.`` and camelCase:
  ``WANDB_API_KEY``, ``HF_TOKEN``, ``api_key``, ``apiKey``, ``AWS_SECRET_ACCESS_KEY``, ``db_password``.
  Names that merely contain the letters are not: ``tokenizer``, ``max_new_tokens``, ``pad_token_id``,
  ``TOKENIZERS_PARALLELISM`` (lmforge's own config keys must survive, eval.py rebuilds runs from them);
* the value of an environment variable with such a name (6 characters or more), wherever it appears,
  e.g. passed into the config with ``${oc.env:MY_SERVICE_TOKEN}`` under an innocent key;
* a Hugging Face access token (``hf_`` and 30 or more letters and digits).

Each is replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

REDACTED = "***"
SECRET_LAST_WORDS = frozenset({"KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY"})
SECRET_ANY_WORDS = frozenset({"SECRET", "PASSWORD", "PASSWD"})
MIN_SECRET_LENGTH = 6
HF_TOKEN_PATTERN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def _words(name: str) -> list[str]:
    return [w.upper() for w in _WORD_SPLIT.split(str(name)) if w]


def is_secret_name(name: Any) -> bool:
    """Whether a key or environment variable name says its value is a secret (see the module doc)."""
    words = _words(name)
    if not words:
        return False
    return words[-1] in SECRET_LAST_WORDS or any(w in SECRET_ANY_WORDS for w in words)


def secret_env_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the secret-named environment variables, longest first (so overlapping ones redact whole)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_name(k) and v and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret environment value (or the given ``secrets``) and Hub token replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    for value in (secret_env_values() if secrets is None else secrets):
        if value in text:
            text = text.replace(value, REDACTED)
    return HF_TOKEN_PATTERN.sub(REDACTED, text)


def _redact(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if is_secret_name(k) and v is not None and v != "" and not isinstance(v, (dict, list)):
                out[k] = REDACTED
            else:
                out[k] = _redact(v, secrets)
        return out
    if isinstance(node, list):
        return [_redact(v, secrets) for v in node]
    if isinstance(node, str):
        return redact_text(node, secrets)
    return node


def redact_config(cfg: Any, resolve: bool = True) -> DictConfig:
    """A copy of ``cfg`` (resolved, as ``config.yaml`` is saved) with every secret replaced by ``***``:
    values under secret-named keys, and secret environment values and Hub tokens inside any string.
    ``cfg`` itself is not changed. Missing values (``???``) stay missing."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        container = OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)
    else:
        container = cfg
    return OmegaConf.create(_redact(container, secret_env_values()))


def redact_container(obj: Any) -> Any:
    """Like :func:`redact_config` for plain dicts and lists (e.g. hyperparameters handed to a logger)."""
    return _redact(obj, secret_env_values())


_OVERRIDE = re.compile(r"^(?P<prefix>[~+]{0,2})(?P<key>[A-Za-z0-9_.\-/@]+)=(?P<value>.*)$", re.S)


def redact_override(text: str, secrets: Iterable[str] | None = None) -> str:
    """A command-line override (``key=value``) with the value replaced when the key is secret-named
    (``+logger.wandb.api_key=...``); Hydra's ``override_dirname`` (overrides joined by commas) too.
    Interpolations (``${oc.env:HF_TOKEN}``) name a variable, not its value, and are kept."""
    if not isinstance(text, str):
        return text
    secrets = secret_env_values() if secrets is None else list(secrets)
    parts = []
    for part in text.split(","):
        m = _OVERRIDE.match(part)
        value = m["value"].strip() if m else ""
        if m and is_secret_name(m["key"]) and value not in ("", "null") and not (
                value.startswith("${") and value.endswith("}")):
            part = f"{m['prefix']}{m['key']}={REDACTED}"
        parts.append(redact_text(part, secrets))
    return ",".join(parts)


def _redact_overrides_in(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_name(k) and isinstance(v, str) and v and not v.startswith("${")
                    else _redact_overrides_in(v, secrets)) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_overrides_in(v, secrets) for v in node]
    if isinstance(node, str):
        return redact_override(node, secrets)
    return node


def redact_hydra_files(output_dir: str | Path, subdir: str = ".hydra") -> list[Path]:
    """Rewrite the copies of the config and the command line that Hydra saves before the job starts
    (``<output_dir>/.hydra/{config,hydra,overrides}.yaml``, and a sweep's ``multirun.yaml``) without
    secrets: secret-named keys and overrides, and secret environment values. Returns the files changed."""
    import yaml

    folder = Path(output_dir)
    secrets = secret_env_values()
    changed = []
    for f in [folder / subdir / n for n in ("config.yaml", "hydra.yaml", "overrides.yaml")] + [folder / "multirun.yaml"]:
        if not f.is_file():
            continue
        text = f.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            clean = redact_text(text, secrets)
        else:
            red = _redact_overrides_in(data, secrets)
            clean = text if red == data else yaml.safe_dump(red, sort_keys=False, allow_unicode=True)
        if clean != text:
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
            tmp.write_text(clean)
            os.replace(tmp, f)
            changed.append(f)
    return changed


class SecretRedactingFilter(logging.Filter):
    """Rewrites log records so their message (with its arguments) and traceback carry no secret values."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_env_values()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's problem, not ours
            return True
        clean = redact_text(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, secrets)
        return True


_FILTER = SecretRedactingFilter()


def install_log_redaction(loggers: Iterable[logging.Logger] | None = None) -> SecretRedactingFilter:
    """Add the redacting filter to every handler of the root logger (Hydra's console and ``<run>/train.log``
    file handlers live there) and of any other logger that has its own handlers (e.g. Lightning's). A
    handler filter sees every record that reaches the handler, propagated ones included. Idempotent;
    call it again after handlers are added."""
    targets = list(loggers) if loggers is not None else [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger) and lg.handlers]
    for lg in targets:
        for handler in lg.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    return _FILTER
