"""Instruction-tuning data without training: the formats people write, the errors on bad rows (file:line and the
message asserted), the labels on hand-made conversations (exactly the assistant's tokens), truncation counts, and
packing and padding-free batches: the loss of a packed batch, and of a batch's conversations put into shared rows,
equals the loss of the same conversations padded (float32, 1e-5), for GPT-2 and Llama under sdpa and eager
attention, through transformers' own model code; a model whose attention mixes a row's sequences (OPT) is found
and refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lmforge.tasks.instruction_tuning.data import InstructionTuningDataModule, collate_chat, fill_rows, pack
from lmforge.tasks.instruction_tuning.formats import read_conversations
from lmforge.tasks.instruction_tuning.module import assistant_loss, chat_forward, keeps_packed_apart
from lmforge.tasks.instruction_tuning.template import (END, IGNORE, TEMPLATE, encode_conversation,
                                                       ensure_chat_template, stop_token_ids)
from lmforge.data.sources import read_table
from lmforge.utils.errors import ConfigError, DataError

WORDS = ("hello world how are you today I am fine thanks what is the opposite of hot cold it is a small dog "
         "the plural of cat is cats please answer briefly good morning").split()


@pytest.fixture(scope="module")
def tok():
    from lmforge.data.tokenizer_training import train_tokenizer

    t = train_tokenizer([" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 4, "bpe", 400)
    return ensure_chat_template(t)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def convs(path: Path, **kw) -> list[dict]:
    return read_conversations(read_table(path), str(path), **kw)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# -- formats ------------------------------------------------------------------------------------
def test_every_format_reads_into_messages(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [system, u("hi"), a("hello")]}])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl",
                         [{"instruction": "Make it polite.", "input": "Sit down.", "output": "Please sit down."},
                          {"instruction": "Say hi.", "input": "", "output": "Hi!"}])
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"},
                                             {"prompt": [u("3+3?")], "completion": [a("6")]}])
    turns = [("human", "hi"), ("gpt", "yo"), ("human", "bye"), ("gpt", "ciao")]
    share = write_jsonl(tmp_path / "share.jsonl", [{"conversations": [{"from": f, "value": v} for f, v in turns]}])
    assert convs(chat)[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    rows = convs(alpaca)
    assert rows[0]["messages"] == [u("Make it polite.\n\nSit down."), a("Please sit down.")]
    assert rows[1]["messages"] == [u("Say hi."), a("Hi!")]
    assert [r["messages"] for r in convs(pc)] == [[u("2+2?"), a("4")], [u("3+3?"), a("6")]]
    assert convs(share)[0]["messages"] == [u("hi"), a("yo"), u("bye"), a("ciao")]
    # a .json file as the hub writes it (a list of records), and rows remember their place
    (tmp_path / "list.json").write_text(json.dumps([{"messages": [u("q"), a("r")]}] * 2))
    assert [r["__record__"] for r in convs(tmp_path / "list.json")] == [1, 2]


BAD = [
    ([{"messages": [u("hi"), a("yo")]}, {"messages": [{"role": "robot", "content": "x"}, a("y")]}],
     r"bad\.jsonl:2: message 1 has the unknown role 'robot'"),
    ([{"messages": [u("hi")]}], r"bad\.jsonl:1: the conversation has no assistant turn \(user\)"),
    ([{"messages": [u("hi"), a("yo")]}, {"messages": [u("one"), u("two"), a("x")]}],
     r"bad\.jsonl:2: message 2 \(user\): two user turns in a row"),
    ([{"messages": [u("hi"), a("  ")]}], r"bad\.jsonl:1: empty content of message 2 \(assistant\)"),
    ([{"messages": [u("hi"), a("yo")]}, {"instruction": "x", "output": "y"}],
     r"bad\.jsonl:2: a row in Alpaca format in a file of chat rows \(first row: .*bad\.jsonl:1\)"),
    ([{"instruction": "", "output": "y"}], r"bad\.jsonl:1: empty instruction"),
    ([{"question": "x", "answer": "y"}], r"bad\.jsonl:1: no chat or instruction fields among question, answer"),
    ([{"messages": [u("hi"), a("yo"), {"role": "system", "content": "late"}, u("x"), a("y")]}],
     r"bad\.jsonl:1: message 3 is a system message"),
]


@pytest.mark.parametrize("rows,message", BAD, ids=["role", "no-assistant", "two-users", "empty", "mixed", "empty-alpaca",
                                                   "no-format", "late-system"])
def test_bad_rows_name_the_file_the_line_and_the_problem(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message):
        convs(path)


def test_alternation_can_be_turned_off(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"messages": [u("one"), u("two"), a("x"), a("y")]}])
    assert len(convs(path, alternation=False)[0]["messages"]) == 4


def test_bad_input_through_train_is_a_data_error_before_any_model(make_cfg, tmp_path):
    from lmforge.train import train

    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": [u("hi"), a("yo")]}] * 5 + [{"messages": [u("hi")]}])
    cfg = make_cfg(["task=instruction_tuning", "data=local", f"data.train_file={path}", "extras.print_config=false"])
    with pytest.raises(DataError, match=re.escape(f"{path}:6: the conversation has no assistant turn")):
        train(cfg)


def test_local_files_get_a_carved_validation_split_and_a_trained_tokenizer(make_cfg, tmp_path):
    from lmforge.train import build_datamodule

    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"I say {w}."} for w in WORDS]
    path = write_jsonl(tmp_path / "alpaca.jsonl", rows)
    cfg = make_cfg(["task=instruction_tuning", "data=local", f"data.train_file={path}", "extras.print_config=false"])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.labelled_splits() == ["train", "validation"]
    assert dm.meta["sizes"] == {"train": len(rows) - 3, "validation": 3}  # data.validation_fraction=0.1
    assert dm.tokenizer.chat_template == TEMPLATE and dm.val_prompts()[0]["messages"][0]["role"] == "user"


# -- labels -------------------------------------------------------------------------------------
def test_exactly_the_assistant_tokens_of_every_turn_are_labelled(tok):
    msgs = [{"role": "system", "content": "please answer briefly"}, u("hello world"), a("I am fine"),
            u("what is the opposite of hot"), a("it is cold")]
    ids, labels = encode_conversation(tok, msgs)
    end = tok.convert_tokens_to_ids(END)

    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # the expected labelled tokens: each answer's tokens and the end marker after it, nothing else
    expected = enc("I am fine") + [end] + enc("it is cold") + [end]
    assert [y for y in labels if y != IGNORE] == expected
    labelled = [i for i, y in enumerate(labels) if y != IGNORE]
    assert all(labels[i] == ids[i] for i in labelled)
    # the boundaries: the token before each answer is the newline after <|assistant|>, the marker is not labelled
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    starts = [i for i in labelled if labels[i - 1] == IGNORE]
    assert [tok.convert_ids_to_tokens(ids[i - 2]) for i in starts] == ["<|assistant|>"] * 2 and assistant not in expected
    # the whole sequence (option): every token but the first
    ids2, all_labels = encode_conversation(tok, msgs, assistant_only=False)
    assert ids2 == ids and all_labels == [IGNORE] + ids[1:]


def test_markers_are_single_special_tokens_and_end_an_answer(tok):
    for m in ("<|system|>", "<|user|>", "<|assistant|>", END):
        assert len(tok(m, add_special_tokens=False)["input_ids"]) == 1
    assert tok.convert_ids_to_tokens(stop_token_ids(tok)) == [END, tok.eos_token]
    assert tok.decode(tok(f"hello{END}", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "hello"


def test_a_tokenizers_own_template_is_kept_and_its_assistant_turns_found(tok):
    import copy

    other = copy.deepcopy(tok)
    other.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    other.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    ensure_chat_template(other)
    assert "im_start" in other.chat_template and other.chat_template != TEMPLATE
    ids, labels = encode_conversation(other, [u("hello"), a("I am fine"), u("thanks"), a("good")])
    assert other.decode([y for y in labels if y != IGNORE]) == "I am fine<|im_end|>good<|im_end|>"
    assert other.convert_ids_to_tokens(stop_token_ids(other))[0] == "<|im_end|>"


def test_truncation_counts_and_drops_or_cuts(tmp_path, tok):
    long_answer = " ".join(["the small dog"] * 40)
    rows = [{"messages": [u("hello"), a("fine")]}, {"messages": [u("hello"), a(long_answer)]}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(tok_dir)
    for truncation, kept in (("drop", 1), ("truncate", 2)):
        dm = InstructionTuningDataModule(train_file=str(path), source="local", max_length=32, truncation=truncation,
                                         tokenizer=str(tok_dir), cache_dir=str(tmp_path / "cache"))
        examples, counts = dm.encode_examples(dm.read_file([path], "data.train_file"))
        assert counts == {"cut": 1, "dropped": 2 - kept, "of": 2} and len(examples) == kept
        assert all(len(x) <= 32 for x, _ in examples)


# -- packing ------------------------------------------------------------------------------------
def _examples(tok) -> list[tuple[list[int], list[int]]]:
    convs_ = [[u("hello world"), a("I am fine thanks")],
              [{"role": "system", "content": "please answer briefly"}, u("what is the opposite of hot"), a("cold")],
              [u("good morning"), a("good morning"), u("the plural of cat"), a("it is cats")],
              [u("how are you"), a("fine")],
              [u("a small dog"), a("the dog is small and it is a good dog")]]
    return [encode_conversation(tok, c) for c in convs_]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_loss_equals_unpacked_loss(tok, family):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    size = dict(gpt2=dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
                llama=dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                           max_position_embeddings=256))[family]
    config = AutoConfig.for_model(family, vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                                  eos_token_id=tok.eos_token_id, **size)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    examples = _examples(tok)
    rows = pack(examples, 64)
    assert len(rows) < len(examples)  # several conversations share a row
    pad = tok.pad_token_id

    def loss(batch):
        with torch.no_grad():  # the module's own forward pass
            return assistant_loss(chat_forward(model, batch).logits, batch["labels"])

    unpacked = collate_chat([{"input_ids": x, "labels": y} for x, y in examples], pad)
    packed = collate_chat([{"input_ids": x, "labels": y, "position_ids": p} for x, y, p in rows], pad)
    assert "attention_mask" not in packed and packed["position_ids"][0, 0] == 0
    assert int((packed["labels"] != IGNORE).sum()) == int((unpacked["labels"] != IGNORE).sum())
    assert abs(float(loss(packed)) - float(loss(unpacked))) < 1e-5
    # the check has teeth: the same rows attending across conversations give another loss
    leaky = {"input_ids": packed["input_ids"], "labels": packed["labels"],
             "attention_mask": torch.ones_like(packed["input_ids"])}
    assert abs(float(loss(leaky)) - float(loss(unpacked))) > 1e-3


def test_pack_keeps_whole_examples_in_order():
    ex = [([1] * 5, [IGNORE] * 5), ([2] * 4, [2] * 4), ([3] * 3, [3] * 3), ([4] * 9, [4] * 9)]
    rows = pack(ex, 9)
    assert [r[0] for r in rows] == [[1] * 5 + [2] * 4, [3] * 3, [4] * 9]
    assert rows[0][2] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


# -- padding-free batches -------------------------------------------------------------------------
def _tiny(family: str, vocab: int, attention: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    size = dict(gpt2=dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
                llama=dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                           max_position_embeddings=256),
                opt=dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, ffn_dim=128,
                         word_embed_proj_dim=64, max_position_embeddings=256))[family]
    config = AutoConfig.for_model(family, vocab_size=vocab, bos_token_id=0, eos_token_id=0, pad_token_id=0, **size)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_padding_free_batches_give_the_padded_loss(tok, family, attention):
    model = _tiny(family, len(tok), attention)
    assert keeps_packed_apart(model) is True and not model.training  # the probe leaves the mode as it was
    examples = [{"input_ids": x, "labels": y} for x, y in _examples(tok)]

    def loss(batch):
        with torch.no_grad():
            return float(assistant_loss(chat_forward(model, batch).logits, batch["labels"]))

    padded = collate_chat(examples, tok.pad_token_id)
    free = collate_chat(examples, tok.pad_token_id, padding_free=True, capacity=64)
    assert "attention_mask" not in free and free["input_ids"].shape[0] < len(examples)
    assert free["input_ids"].numel() < padded["input_ids"].numel()  # less padding computed
    assert free["num_sequences"] == len(examples)
    assert free["num_tokens"] == int(padded["attention_mask"].sum())
    assert int((free["labels"] != IGNORE).sum()) == int((padded["labels"] != IGNORE).sum())
    assert abs(loss(free) - loss(padded)) < 1e-5
    # the check has teeth: the same rows attending across conversations give another loss
    leaky = {"input_ids": free["input_ids"], "labels": free["labels"],
             "attention_mask": torch.ones_like(free["input_ids"])}
    assert abs(loss(leaky) - loss(padded)) > 1e-3


def test_fill_rows_puts_the_longest_first_and_keeps_each_example_whole():
    ex = [{"input_ids": [k] * n, "labels": [k] * n} for k, n in ((1, 3), (2, 7), (3, 2), (4, 5), (5, 12))]
    rows = fill_rows(ex, 10)
    # longest first: 12 alone (over capacity), 7 (+3 fits: 10), 5 (+2: 7); each row keeps the batch's order
    assert [r["input_ids"] for r in rows] == [[5] * 12, [1] * 3 + [2] * 7, [3] * 2 + [4] * 5]
    assert rows[1]["position_ids"] == [0, 1, 2, 0, 1, 2, 3, 4, 5, 6]
    batch = collate_chat(ex, 0, padding_free=True, capacity=10)
    assert batch["input_ids"].shape == (3, 12) and batch["num_sequences"] == 5 and batch["num_tokens"] == 29
    assert batch["position_ids"][2].tolist() == [0, 1, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]  # the padding: a sequence of its own
    assert batch["labels"][2, 7:].eq(IGNORE).all()


def _chat_dm(tmp_path, **kw) -> InstructionTuningDataModule:
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": [u("hello"), a("hi")]}) + "\n")
    return InstructionTuningDataModule(train_file=str(path), source="local", max_length=32, **kw)


def test_a_model_that_mixes_packed_sequences_is_found_and_refused(tok, tmp_path):
    """OPT numbers its positions from the attention mask and builds its own mask: a packed row's conversations
    would attend to each other. The probe says so; packing and padding_free=true are refused with the fix, auto
    falls back to padded batches."""
    opt = _tiny("opt", len(tok))
    assert keeps_packed_apart(opt) is False
    examples = [{"input_ids": x, "labels": y} for x, y in _examples(tok)]
    free = collate_chat(examples, tok.pad_token_id, padding_free=True, capacity=64)
    padded = collate_chat(examples, tok.pad_token_id)
    with torch.no_grad():  # what the refusal prevents: OPT's loss on shared rows is not the padded loss
        losses = [float(assistant_loss(opt(**{k: b[k] for k in ("input_ids", "attention_mask", "position_ids")
                                              if k in b}, use_cache=False).logits, b["labels"])) for b in (free, padded)]
    assert abs(losses[0] - losses[1]) > 1e-3
    for kw, key in (({"packing": True}, "data.packing=true"), ({"padding_free": True}, "data.padding_free=true")):
        with pytest.raises(ConfigError, match=re.escape(key) + r".*\(opt\).*data.padding_free=false"):
            _chat_dm(tmp_path, **kw).use_padding_free(False, "opt")
    assert _chat_dm(tmp_path).use_padding_free(False, "opt") is False
    assert _chat_dm(tmp_path).use_padding_free(True, "gpt2") is True
    assert _chat_dm(tmp_path, padding_free=False).use_padding_free(True, "gpt2") is False
    assert _chat_dm(tmp_path, packing=True).use_padding_free(True, "gpt2") is False  # rows already packed
    with pytest.raises(ConfigError, match="data.padding_free=maybe: expected auto, true or false"):
        _chat_dm(tmp_path, padding_free="maybe")
