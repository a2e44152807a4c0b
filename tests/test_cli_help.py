"""What a new user reads: ``dreamdist`` alone, ``dreamdist methods``, ``dreamdist interpret``."""

from __future__ import annotations

import re

import pytest
import torch

from dreamdist.cli import main, plain
from dreamdist.methods import method_names
from dreamdist.vocab import PIECE, nearest_words, readable_token


def test_dreamdist_alone_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dreamdist")
    for command in ("train", "generate", "eval", "demo", "methods"):
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


def test_methods_are_listed_for_people(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert f"\n{name}\n" in out
    assert out.count("key flags: ") == len(method_names())
    assert "--class-noun (required)" in out and "--num-prompts 32" in out
    assert "``" not in out and ":class:" not in out and not re.search(r"`[^`]+`", out)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("see :class:`~dreamdist.Backbone` and ``--gamma``", "see dreamdist.Backbone and --gamma"),
        ("the ``mixture`` objective, `x`, **bold**", "the mixture objective, x, bold"),
    ],
)
def test_plain_strips_rst_markup(text, expected):
    assert plain(text) == expected


def test_readable_tokens(backbone):
    tokenizer = backbone.tokenizer
    assert readable_token(tokenizer, tokenizer.convert_tokens_to_ids("cathedral</w>")) == "cathedral"
    assert readable_token(tokenizer, tokenizer.convert_tokens_to_ids("cath")) == "cath" + PIECE
    for token_id in tokenizer.all_special_ids:  # <|startoftext|>, <|endoftext|> (also the pad token)
        assert readable_token(tokenizer, token_id) is None
    lone_bytes = [i for t, i in tokenizer.get_vocab().items() if len(t) == 1 and 0xA0 <= ord(t) < 0x100]
    assert lone_bytes and all(readable_token(tokenizer, i) is None for i in lone_bytes[:20])  # half a character


def test_nearest_words_skip_special_tokens_and_bytes(backbone):
    tokenizer = backbone.tokenizer
    special = torch.tensor(tokenizer.all_special_ids)
    vectors = backbone.token_rows(special)[:1][None]  # (K=1, M=1, d): exactly <|startoftext|>'s own row
    words = nearest_words(backbone, vectors, top_k=5)
    assert len(words) == 1 and len(words[0]) == 5
    for text, score in words[0]:
        assert "<|" not in text and "</w>" not in text and "\ufffd" not in text and -1 <= score <= 1


def test_interpret_prints_words(refs, tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--images", str(refs), "--model", str(tiny_model), "--out", str(run), "--steps", "1",
            "--num-prompts", "2", "--num-tokens", "2", "--num-samples", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["interpret", str(run), "--top-k", "8"]) == 0
    out = capsys.readouterr().out
    assert "token 1:" in out and "token 2:" in out and f"'{PIECE}' marks a word piece" in out
    assert "<|startoftext|>" not in out and "<|endoftext|>" not in out and "</w>" not in out
    assert main(["interpret", str(run), "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err
