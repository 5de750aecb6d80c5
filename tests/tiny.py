"""Tiny random models of several architectures, saved to a folder with real tokenizers.

They exercise each architecture's real loading path (`from_pretrained` on a folder) in well
under a second, offline.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The cat sat on the mat, and the cat slept.",
    "Transformers are great; transformers attend to tokens.",
    "A dog chased the cat across the garden while the bird sang.",
    "Attention is a weighted average of value vectors.",
]
ARCHS = ("bert", "distilbert", "gpt2", "llama", "t5")


def _wordpiece(folder: Path):
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({w.strip(".,;").lower() for line in CORPUS for w in line.split()} - {"transformers"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ";", "!", "?", "'", "-"]
    vocab += list(letters) + [f"##{c}" for c in letters] + words + ["transform", "##ers"]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


def _bpe(metaspace: bool, template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if not metaspace else []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    if template == "bos":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    elif template == "eos":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build(arch: str, folder: Path) -> Path:
    """Build and save a tiny random `arch` model with its tokenizer into `folder`."""
    import torch
    from transformers import (
        AutoModel,
        BertConfig,
        DistilBertConfig,
        GPT2Config,
        LlamaConfig,
        T5Config,
    )

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if arch in ("bert", "distilbert"):
        tok = _wordpiece(folder)
    elif arch == "gpt2":
        tok = _bpe(metaspace=False, template=None)
    elif arch == "llama":
        tok = _bpe(metaspace=True, template="bos")
    elif arch == "t5":
        tok = _bpe(metaspace=True, template="eos")
    else:
        raise ValueError(arch)
    vocab = len(tok)
    config = {
        "bert": lambda: BertConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        "distilbert": lambda: DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
        ),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        "llama": lambda: LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        "t5": lambda: T5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            decoder_start_token_id=tok.pad_token_id,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        ),
    }[arch]()
    model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return folder
