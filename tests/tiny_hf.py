"""Tiny Hugging Face models for the tests: built from configs, random weights, nothing downloaded.

``tiny_model("llama")`` is a LLaMA with 2 blocks of width 32, a vocabulary of 64 and 16
positions, in eval mode, its weights drawn from ``torch.manual_seed(seed)``. Keyword arguments
change config fields (``tiny_model("llama", num_hidden_layers=1, tie_word_embeddings=True)``).
Callers that may run without transformers call ``pytest.importorskip("transformers")`` first.
"""
from __future__ import annotations

import torch

# name: (config class, model class, the config's fields)
_LAYOUT = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=16)
MODELS = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_LAYOUT, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(_LAYOUT, num_key_value_heads=2, tie_word_embeddings=True)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                 num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=16)),
    "neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", _LAYOUT),
    "bert": ("BertConfig", "BertForMaskedLM", dict(_LAYOUT, num_attention_heads=2)),
}


def tiny_model(name: str, seed: int = 0, **changes) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    config_class, model_class, fields = MODELS[name]
    config = getattr(transformers, config_class)(**{**fields, **changes})
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(config).eval()
