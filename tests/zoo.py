"""The zoo: tiny random models of many transformers architectures, saved with real tokenizers.

The one builder of tiny models for the whole suite. Each model is built offline from transformers'
own config class (`AutoConfig.for_model(type, hidden_size=32, ...)`), random weights, 2 layers x 4
heads, saved to a folder with a trained tokenizer of its family, so tests load it through
attnviz's own loading path (`from_pretrained` on a folder) in well under a second.

The first five (`ARCHS`) are the small set most tests use; `SPECS` is every architecture the zoo
checks (tests/test_zoo.py) and docs/models.md's table lists (scripts/gen_arch_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = [
    "Emily always wanted to visit Paris so she took some French lessons.",
    "The cat sat on the mat, and the cat slept.",
    "Transformers are great; transformers attend to tokens.",
    "A dog chased the cat across the garden while the bird sang.",
    "Attention is a weighted average of value vectors.",
]
ARCHS = ("bert", "distilbert", "gpt2", "llama", "t5")  # the small set: base models, as tests expect


@dataclass(frozen=True)
class Spec:
    """One zoo architecture: a transformers model type and what makes it tiny (or special)."""

    name: str  # unique zoo name (the model type, or type-variant)
    model_type: str
    family: str  # "encoder", "decoder" or "encoder-decoder"
    tokenizer: str  # "wordpiece", "bytelevel" or "metaspace"
    feature: str = ""  # what this entry exercises, for the table
    config: dict[str, Any] = field(default_factory=dict)
    fast: bool = False  # in the quick (not slow) part of the zoo tests


_DEC = {"head_dim": 8, "num_key_value_heads": 2}  # grouped-query: 4 query heads share 2 key heads
_ENCDEC = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}


def _e(
    name: str, feature: str = "", fast: bool = False, model_type: str | None = None, **config: Any
) -> Spec:
    return Spec(name, model_type or name, "encoder", "wordpiece", feature, config, fast)


def _d(
    name: str, feature: str = "", fast: bool = False, model_type: str | None = None, **config: Any
) -> Spec:
    return Spec(name, model_type or name, "decoder", "bytelevel", feature, config, fast)


def _s(
    name: str, feature: str = "", fast: bool = False, model_type: str | None = None, **config: Any
) -> Spec:
    return Spec(name, model_type or name, "encoder-decoder", "metaspace", feature, config, fast)


SPECS: tuple[Spec, ...] = (
    # encoders
    _e("bert", "absolute positions", fast=True),
    _e("distilbert", "", fast=True),
    _e("roberta"),
    _e("xlm-roberta"),
    _e("camembert"),
    _e("data2vec-text"),
    _e("electra", "embedding projection", embedding_size=16),
    _e("ernie"),
    _e("albert", "one layer module run N times", fast=True, embedding_size=16),
    _e("deberta", "disentangled position bias", fast=True),
    _e("deberta-v2", "disentangled position bias", relative_attention=True, position_buckets=8),
    _e("modernbert", "local/global layers", global_attn_every_n_layers=2, local_attention=4),
    _e("mpnet", "relative position bias"),
    _e("megatron-bert", "pre-norm"),
    _e("roformer", "rotary encoder", embedding_size=32),
    _e("rembert", "", input_embedding_size=16, output_embedding_size=16),
    _e("esm", "rotary encoder", position_embedding_type="rotary", pad_token_id=0, mask_token_id=4),
    _e("bert-generation", ""),
    _e("splinter", "no is_causal on its attention", fast=True),
    _e("convbert", "span convolution heads", head_ratio=1),
    _e("ibert", ""),
    # decoders
    _d("gpt2", "Conv1D projections", fast=True),
    _d("gpt_neo", "local attention layers", attention_types=[[["global", "local"], 1]], window_size=4),
    _d("gpt_neox", "rotary, parallel blocks"),
    _d("gptj", "partial rotary", rotary_dim=4),
    _d("codegen", "partial rotary", rotary_dim=4),
    _d("llama", "grouped-query", fast=True, **_DEC),
    _d("mistral", "sliding window", sliding_window=4, **_DEC),
    _d("mixtral", "experts", num_local_experts=4, num_experts_per_tok=2, **_DEC),
    _d("qwen2", "attention bias", **_DEC),
    _d("qwen2_moe", "experts", shared_expert_intermediate_size=16, **_MOE, **_DEC),
    _d("qwen3", "q/k norm", **_DEC),
    _d("qwen3_moe", "experts", **_MOE, **_DEC),
    _d("phi", "partial rotary"),
    _d("phi3", "fused qkv", num_key_value_heads=2),
    _d("gemma", "", **_DEC),
    _d("gemma2", "logit softcapping", fast=True, query_pre_attn_scalar=8, sliding_window=4, **_DEC),
    _d("gemma3_text", "sliding + global layers", query_pre_attn_scalar=8, sliding_window=4, **_DEC),
    _d("falcon", "rotary (Falcon-7B layout)", fast=True, alibi=False, num_kv_heads=1, multi_query=True),
    _d("falcon-alibi", "ALiBi", model_type="falcon", alibi=True),
    _d("bloom", "ALiBi", n_head=4),
    _d("mpt", "ALiBi", n_heads=4, d_model=32, n_layers=2),
    _d("opt", "", ffn_dim=64, word_embed_proj_dim=32),
    _d("xglm", "sinusoidal positions", ffn_dim=64),
    _d("stablelm", "partial rotary", **_DEC),
    _d("starcoder2", "sliding window", sliding_window=4, **_DEC),
    _d("olmo", "", **_DEC),
    _d("olmo2", "q/k norm", **_DEC),
    _d("cohere", "parallel blocks", **_DEC),
    _d("granite", "scaled residuals", **_DEC),
    _d("granitemoe", "experts", num_local_experts=4, num_experts_per_tok=2, **_DEC),
    _d("persimmon", "q/k layer norm"),
    _d("biogpt", ""),
    _d("gpt_bigcode", "multi-query", multi_query=True),
    _d("smollm3", "no rotary on some layers", **_DEC),
    _d("glm", "", **_DEC),
    _d("helium", "", **_DEC),
    _d("nemotron", "", **_DEC),
    _d("gpt_oss", "attention sinks, experts", fast=True, num_local_experts=4, sliding_window=4, **_DEC),
    _d("arcee", "", **_DEC),
    _d("ernie4_5", "", **_DEC),
    _d("apertus", "", **_DEC),
    # encoder-decoders
    _s("t5", "relative position bias", fast=True),
    _s("mt5", "", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4),
    _s("umt5", "per-layer position bias", d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
    _s("bart", "", fast=True, **_ENCDEC),
    _s("mbart", "", **_ENCDEC),
    _s("marian", "", **_ENCDEC),
    _s("pegasus", "", **_ENCDEC),
    _s("blenderbot", "", **_ENCDEC),
    _s("blenderbot-small", "", **_ENCDEC),
    _s("plbart", "", **_ENCDEC),
    _s("m2m_100", "", **_ENCDEC),
)
BY_NAME = {s.name: s for s in SPECS}


def _wordpiece():
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


def _tokenizer(spec: Spec):
    if spec.tokenizer == "wordpiece":
        return _wordpiece()
    if spec.name in ("gpt2",):
        return _bpe(metaspace=False, template=None)
    if spec.name == "llama":
        return _bpe(metaspace=True, template="bos")
    if spec.tokenizer == "metaspace":
        return _bpe(metaspace=True, template="eos")
    return _bpe(metaspace=False, template="bos")


def _small_config(name: str, tok: Any) -> Any:
    """The five configs of the small set, exactly as the suite has always built them."""
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig, T5Config

    vocab = len(tok)
    if name == "bert":
        return BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64,
        )  # fmt: skip
    if name == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
        )
    if name == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    if name == "llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
    return T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip


def config_of(spec: Spec, tok: Any) -> Any:
    """The tiny config of `spec`: 2 layers, 4 heads of size 8, hidden 32, vocab of the tokenizer."""
    from transformers import AutoConfig

    if spec.name in ARCHS:
        return _small_config(spec.name, tok)
    ids = {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
        "eos_token_id": tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id,
    }
    common: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        **ids,
    }
    if spec.family == "encoder-decoder":
        common["decoder_start_token_id"] = tok.pad_token_id
    common.update(spec.config)
    return AutoConfig.for_model(spec.model_type, **common)


def _auto_class(spec: Spec) -> Any:
    import transformers

    if spec.name in ARCHS:
        return transformers.AutoModel
    return {
        "encoder": transformers.AutoModelForMaskedLM,
        "decoder": transformers.AutoModelForCausalLM,
        "encoder-decoder": transformers.AutoModelForSeq2SeqLM,
    }[spec.family]


def build_spec(spec: Spec, folder: Path) -> Path:
    """Build and save `spec`'s tiny random model (with its LM head where it has one) into `folder`."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(spec)
    config = config_of(spec, tok)
    torch.manual_seed(0)
    try:
        model = _auto_class(spec).from_config(config)
    except ValueError:  # no LM head for this type: the base model
        from transformers import AutoModel

        model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    return folder


def build(arch: str, folder: Path) -> Path:
    """Build and save the tiny random model named `arch` (a zoo name) into `folder`."""
    if arch not in BY_NAME:
        raise ValueError(arch)
    return build_spec(BY_NAME[arch], folder)
