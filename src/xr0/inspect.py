"""`xr0 inspect`: parameter counts per part, and whether the non-VLM layout equals the official checkpoint's."""

from __future__ import annotations

import json
import math
import pathlib
import sys

from .config import PRESETS

# name<TAB>[shape] of the 219 non-VLM tensors of the released checkpoints (`xr0 inspect` checks the preset against it).
OFFICIAL_LAYOUT = pathlib.Path(__file__).parent / "assets" / "official_layout.tsv"

PARTS = {  # first matching prefix wins
    "vlm.token_embedding": "vlm.model.language_model.embed_tokens.",
    "vlm.text": "vlm.model.language_model.",
    "vlm.vision": "vlm.model.visual.",
    "expert.dit_layers": "dit.",
    "expert.other": "",
}


def official_layout() -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in OFFICIAL_LAYOUT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            layout[name] = tuple(json.loads(shape))
    return layout


def report(preset: str | None = None, checkpoint: str | None = None) -> dict:
    """Counts and layout of a preset (built on the meta device) or of a checkpoint folder (xr0 or official)."""
    from .model.weights import count_parameters
    from .policy import XR0Policy

    if checkpoint is not None:
        from .checkpoints import resolve_checkpoint

        policy = XR0Policy.from_pretrained(resolve_checkpoint(checkpoint), device="cpu")
        preset = policy.config.name
    else:
        policy = XR0Policy.from_preset(preset, device="meta")
    model = policy.model
    state = model.state_dict()
    if model.vlm.config.tie_word_embeddings:
        state.pop("vlm.lm_head.weight", None)  # tied to the token embedding; not stored
    parts = dict.fromkeys(PARTS, 0)
    for name, tensor in state.items():
        part = next(p for p, prefix in PARTS.items() if name.startswith(prefix))
        parts[part] += math.prod(tensor.shape)
    expert = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("vlm.")}
    out = {
        "preset": preset,
        "total_parameters": count_parameters(model),
        "parameters_without_token_embedding": count_parameters(model) - parts["vlm.token_embedding"],
        "parts": parts,
        "tensors": {"vlm": sum(k.startswith("vlm.") for k in state), "expert": len(expert)},
        "expert_parameters": sum(math.prod(s) for s in expert.values()),
        "runtime": policy.config.runtime(),  # DiT window, RoPE offset, table precision, trained prefix
    }
    if preset == "xr0-4b":
        official = official_layout()
        out["official_layout_match"] = expert == official
        out["official_layout_diff"] = {
            "missing": sorted(set(official) - set(expert)),
            "unexpected": sorted(set(expert) - set(official)),
            "shape": sorted(k for k in set(official) & set(expert) if official[k] != expert[k]),
        }
    return out


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="xr0-4b", choices=sorted(PRESETS))
    src.add_argument("--checkpoint", default=None, help="a checkpoint folder (xr0 or official), a training run or 'embedded'")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    try:
        out = report(args.preset, args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"xr0 inspect: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"preset {out['preset']}: {out['total_parameters'] / 1e6:,.1f}M parameters "
          f"({out['parameters_without_token_embedding'] / 1e6:,.1f}M without the token embedding)")
    for part, n in out["parts"].items():
        print(f"  {part:<20} {n / 1e6:>10,.2f}M")
    print("runtime:", ", ".join(f"{k} {v}" for k, v in out["runtime"].items()))
    if "official_layout_match" in out:
        print("official layout:", "MATCH" if out["official_layout_match"] else f"MISMATCH {out['official_layout_diff']}")
    return 0
