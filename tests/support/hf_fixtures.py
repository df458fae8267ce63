"""A tiny Llama checkpoint in the Hugging Face layout, written by the tests (no download): random
weights, grouped-query attention, and a word-level tokenizer over the harness corpus words, so the
same corpus text and multiple-choice prompts run through the HF path."""

from __future__ import annotations

from pathlib import Path


def _write_tokenizer(directory: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from harness.data.tokenizer import WordTokenizer

    backend = Tokenizer(models.WordLevel(vocab=WordTokenizer(vocab_size).vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>").save_pretrained(directory)


def _write_model(directory: Path, vocab_size: int, seed: int, architecture: str, **config: object) -> Path:
    """A random ``architecture`` (a transformers class name) at the shared tiny widths, with the word tokenizer."""
    import torch
    import transformers

    _write_tokenizer(directory, vocab_size)
    model_class = getattr(transformers, architecture)
    shared = {
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    model_class(model_class.config_class(**shared, **config)).save_pretrained(directory, safe_serialization=True)
    return directory


def write_tiny_llama(directory: Path, *, vocab_size: int = 1024, seed: int = 0) -> Path:
    return _write_model(directory, vocab_size, seed, "LlamaForCausalLM", rope_theta=10000.0)


def write_tiny_qwen3_moe(
    directory: Path, *, vocab_size: int = 1024, seed: int = 0, norm_topk_prob: bool = True
) -> Path:
    """Qwen3-MoE's layout (QK norms, 4 experts of which each token takes 2) at the tiny widths."""
    return _write_model(
        directory,
        vocab_size,
        seed,
        "Qwen3MoeForCausalLM",
        moe_intermediate_size=256,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
    )
