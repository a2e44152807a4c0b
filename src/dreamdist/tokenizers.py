"""Build a small CLIP BPE tokenizer offline from a word list.

Real CLIP vocabularies have 49,408 entries; a tiny model (tests, the toy world) needs a few
hundred. The result is an ordinary ``CLIPTokenizer`` folder (vocab.json + merges.txt), so every
code path is the one a real checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for raw bytes (GPT-2 table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to one word, CLIP style (last symbol gets ``</w>``)."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, 1 << 30), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, index = min(pairs)
        if rank == 1 << 30:
            break
        pieces[index : index + 2] = [pieces[index] + pieces[index + 1]]
    return pieces


def build_vocab_and_merges(words: list[str]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary (every byte, every byte + ``</w>``, every merge result) and merge rules.

    Each word first gets the merges ``(c1, c2), (c1c2, c3), ...``; where merges of other words
    pre-empt that chain, the pieces BPE actually produces are chained by later-ranked merges,
    until every word is a single token. Anything outside ``words`` still tokenizes into pieces.
    """
    base = _bytes_to_unicode()
    tokens = base + [c + "</w>" for c in base]
    seen_tokens = set(tokens)
    ranks: dict[tuple[str, str], int] = {}

    def add_chain(pieces: list[str]) -> None:
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((merged, piece), len(ranks))
            merged += piece
            if merged not in seen_tokens:
                seen_tokens.add(merged)
                tokens.append(merged)

    for word in words:
        add_chain([*word[:-1], word[-1] + "</w>"])
    for _ in range(8):  # each round fixes every word broken by the previous one's ranks
        broken = [pieces for pieces in (_bpe(w, ranks) for w in words) if len(pieces) > 1]
        if not broken:
            break
        for pieces in broken:
            add_chain(pieces)
    tokens += list(SPECIAL_TOKENS)
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(words: list[str], folder: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """Write a CLIP tokenizer for ``words`` into ``folder`` and return it loaded from there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = sorted({w.lower() for w in words if w.isascii() and w.strip() and " " not in w})
    vocab, merges = build_vocab_and_merges(clean)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=max_length
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5's SentencePiece vocabulary


def build_t5_tokenizer(words: list[str], folder: str | Path, max_length: int = 32):
    """Write a T5-style (SentencePiece Unigram) tokenizer for ``words`` into ``folder`` and load it.

    Pieces are ``<pad>``, ``</s>``, ``<unk>``, ``▁word`` for every word and every single character
    (alone and with ``▁``), so any ASCII text tokenizes; ``</s>`` is appended to every sequence, as
    T5's tokenizer does. The result is an ordinary ``T5TokenizerFast`` folder (``tokenizer.json``),
    read back by ``from_pretrained`` and by the Flux / SD3 pipelines.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = sorted({w.lower() for w in words if w.isascii() and w.strip() and " " not in w})
    chars = sorted({chr(c) for c in range(33, 127)})
    pieces = [(token, 0.0) for token in T5_SPECIAL]
    pieces += [("▁" + w, -1.0) for w in clean]  # whole words first: the most likely segmentation
    pieces += (
        [("▁", -8.0)] + [(c, -10.0) for c in chars] + [("▁" + c, -9.0) for c in chars if "▁" + c not in dict(pieces)]
    )
    model = models.Unigram(pieces, unk_id=2, byte_fallback=False)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    wrapped = T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )
    wrapped.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)
