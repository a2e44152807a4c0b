"""Vocabulary entries for people: the nearest words of learned token vectors (``dreamdist interpret``).

CLIP's tokenizer is a byte-level BPE: an entry such as ``'cathedral</w>'`` is a whole word (``</w>``
ends a word), ``'cath'`` is the start or middle of a longer word, and some entries are single bytes
of a multi-byte character (no text on their own) or special tokens (``<|startoftext|>``,
``<|endoftext|>``, the pad token). Only entries that read as text are listed: special tokens and
lone bytes are skipped, word pieces carry a trailing ``PIECE`` mark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PIECE = "…"  # marks an entry that does not end a word: "cath…" is the start or middle of a longer word
END_OF_WORD = "</w>"


def readable_token(tokenizer, token_id: int) -> str | None:
    """The text of vocabulary entry ``token_id`` (``PIECE`` appended when it does not end a word);
    None for special tokens, control characters and bytes that are not text on their own."""
    if token_id in tokenizer.all_special_ids:
        return None
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token is None:  # an embedding row past the tokenizer's vocabulary
        return None
    text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False).strip()  # byte decoder: UTF-8 text
    if not text or "\ufffd" in text or not text.isprintable():
        return None
    return text if token.endswith(END_OF_WORD) else text + PIECE


def nearest_words(backbone, vectors: torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``top_k`` readable vocabulary entries nearest (cosine) to each learned token, averaged over prompts.

    Args:
        backbone: a ``dreamdist.backbones.Backbone`` (its first tokenizer names the rows).
        vectors: (K, M, d_tok) learned embeddings of one concept.
    Returns:
        M lists of ``top_k`` (text, cosine) pairs, best first.
    """
    rows = backbone.token_rows(torch.arange(backbone.token_embedding.weight.shape[0]))  # (V, d_tok)
    mean = F.normalize(vectors.detach().float().cpu().mean(dim=0), dim=-1)  # (M, d_tok)
    scores = mean @ F.normalize(rows, dim=-1).T  # (M, V)
    order = scores.argsort(dim=-1, descending=True)  # (M, V)
    tokenizer, texts = backbone.tokenizer, {}
    table = []
    for m in range(scores.shape[0]):
        words = []
        for token_id in order[m].tolist():  # best first, until top_k readable entries
            if token_id not in texts:
                texts[token_id] = readable_token(tokenizer, token_id)
            if texts[token_id] is not None:
                words.append((texts[token_id], float(scores[m, token_id])))
                if len(words) == top_k:
                    break
        table.append(words)
    return table
