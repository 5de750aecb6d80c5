"""Tiny tokenizers of every family, built offline in milliseconds, and tiny models that use them.

byte-level BPE (GPT-2, Llama 3, SmolLM2), SentencePiece-style BPE with byte fallback (Llama 2,
Mistral), Unigram with byte fallback (T5, ALBERT, XLNet spell pieces the same way) and WordPiece
(BERT). None of them has 北, 京 or an emoji in its vocabulary except WordPiece, whose pieces are
whole characters: the others must spell them from bytes.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CORPUS = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The cat sat on the mat, and the cat slept.",
    "Transformers are great; transformers attend to tokens.",
    "A dog chased the cat across the garden while the bird sang.",
]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
FAMILIES = ("byte-level", "byte-fallback", "unigram", "wordpiece")
TEXT = "Paris 北京 😀 cats\nok"  # 北 = e5 8c 97, 京 = e4 ba ac, 😀 = f0 9f 98 80


def _wrap(tok: Any, template: bool = True) -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    if template:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@cache
def byte_level() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return _wrap(tok)


def _metaspace(tok: Any) -> Any:
    from tokenizers import decoders, pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    return tok


@cache
def byte_fallback() -> Any:
    """SentencePiece-style BPE: ▁ marks spaces, unknown characters are spelt <0xE5> <0x8C> <0x97>."""
    from tokenizers import Tokenizer, models, trainers

    trained = _metaspace(Tokenizer(models.BPE(unk_token="<unk>")))
    trained.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS))
    spec = json.loads(trained.to_str())["model"]
    vocab = dict(spec["vocab"])
    for piece in BYTES:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = _metaspace(Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True)))
    tok.add_special_tokens(SPECIALS)
    return _wrap(tok)


@cache
def unigram() -> Any:
    """A Unigram model (trained by tokenizers' own trainer) with byte fallback."""
    from tokenizers import Tokenizer, models, trainers

    trained = _metaspace(Tokenizer(models.Unigram()))
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=SPECIALS, unk_token="<unk>")
    trained.train_from_iterator(CORPUS * 3, trainer=trainer)
    spec = json.loads(trained.to_str())["model"]
    vocab = [tuple(v) for v in spec["vocab"]] + [(piece, -20.0) for piece in BYTES]
    tok = _metaspace(Tokenizer(models.Unigram(vocab, unk_id=spec["unk_id"], byte_fallback=True)))
    tok.add_special_tokens(SPECIALS)
    return _wrap(tok)


@cache
def wordpiece() -> Any:
    from transformers import BertTokenizerFast

    words = sorted({w.strip(".,;").lower() for line in CORPUS for w in line.split()} - {"transformers"})
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ";", "北", "京"]
    vocab += list(letters) + [f"##{c}" for c in letters] + words + ["transform", "##ers"]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


BUILDERS = {
    "byte-level": byte_level,
    "byte-fallback": byte_fallback,
    "unigram": unigram,
    "wordpiece": wordpiece,
}


def build_model(family: str, folder: Path) -> Path:
    """A tiny random model (Llama, or BERT for WordPiece) saved with that family's tokenizer."""
    import copy

    import torch
    from transformers import AutoModel, BertConfig, LlamaConfig

    tok = copy.deepcopy(BUILDERS[family]())  # the cached one stays as built
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if family == "wordpiece":
        config: Any = BertConfig(vocab_size=len(tok), max_position_embeddings=64, **small)
    else:
        config = LlamaConfig(
            vocab_size=len(tok),
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **small,
        )
    folder.mkdir(parents=True, exist_ok=True)
    AutoModel.from_config(config).save_pretrained(folder)
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return folder
