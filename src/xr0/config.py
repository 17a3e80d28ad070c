"""Typed configuration and the named presets: the one place for every model default.

Conventions used everywhere in xr0:
- Flow time t = 0 is pure noise, t = 1 is data (XR-0's convention; openpi/LeRobot use the reverse).
- Chunks are (B, T, D): T = chunk length, D = 32 padded action dims. K/V are (B, H, L, Dh).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

# Token ids of the real Qwen3-VL vocabulary (the tokenizer built by xr0.processing.tokenizer).
IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656
VISION_START_TOKEN_ID = 151652
VISION_END_TOKEN_ID = 151653
QWEN_VOCAB_SIZE = 151936  # embedding rows in every Qwen3-VL checkpoint (>= the 151,669 tokenizer entries)
PADDED_DIM = 32  # the official layout's padded action and state width (D)
MAX_STEPS = 128  # most denoising steps a caller may ask for (sample(steps=), the server's `steps`)
IGNORE = -100  # label of tokens a language-model loss skips (VL co-training: all but the answer)
MAX_PREFIX = 6  # longest clean action prefix of async training: the official random.randint(1, min(6, T))


@dataclass
class ExpertConfig:
    """The DiT action expert (spec §2.3-2.5). Width = num_heads x head_dim must equal the VLM's KV width."""

    num_layers: int = 16
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_heads: int = 8
    head_dim: int = 128
    time_embed_dim: int = 256
    rms_eps: float = 1e-6
    local_window: int | None = 4  # Λ-shape band; None = plain causal attention among action tokens
    rope_offset: int = 10  # extra RoPE shift of every noisy (non-prefix) action token; 0 disables it


# The settings a checkpoint's weights do not fix, and that must match how it was trained: the DiT mask window, the
# RoPE offset, the RoPE table precision and the longest trained prefix. Written into every checkpoint; `xr0 inspect`
# shows them and the CLI's --dit-window/--rope-offset/--rope-tables override them.
RUNTIME_FIELDS = ("local_window", "rope_offset", "rope_tables", "max_prefix")
ROPE_TABLES = ("fp32", "bf16")  # bf16: every rotary inv_freq rounded to bf16, as the April code's `.to(bfloat16)`
# How the released checkpoints' Hugging Face runtime (model_type "mibot") runs the DiT: plain causal mask, no RoPE
# offset, fp32 tables, no trained prefix (its generate() takes none).
RELEASE_RUNTIME = {"local_window": None, "rope_offset": 0, "rope_tables": "fp32", "max_prefix": 0}
# How the April post-training code (DeepSpeed checkpoints) runs it: the w = 4 band, +10, tables rounded to bf16.
APRIL_RUNTIME = {"local_window": 4, "rope_offset": 10, "rope_tables": "bf16", "max_prefix": MAX_PREFIX}


def add_runtime_arguments(parser) -> None:
    """The CLI flags that override a checkpoint's RUNTIME_FIELDS (xr0 eval, serve, convert)."""
    g = parser.add_argument_group("runtime settings (default: the checkpoint's own; `xr0 inspect --checkpoint`)")
    g.add_argument("--dit-window", default=None, metavar="N|causal",
                   help="DiT action-token attention: a band of N earlier actions (the April code and xr0's "
                        "post-async recipe: 4) or causal (the release runtime)")
    g.add_argument("--rope-offset", type=int, default=None, metavar="N",
                   help="extra RoPE shift of the noisy action tokens (April code: 10; release runtime: 0)")
    g.add_argument("--rope-tables", choices=ROPE_TABLES, default=None,
                   help="rotary table precision (April code as built: bf16; release runtime: fp32)")


def runtime_settings(args) -> dict:
    """The RUNTIME_FIELDS that add_runtime_arguments' flags set (only those given)."""
    out = {}
    window = getattr(args, "dit_window", None)
    if window is not None:
        if window != "causal" and not window.isdigit():
            raise ValueError(f"--dit-window must be a non-negative integer or 'causal', got {window!r}")
        out["local_window"] = None if window == "causal" else int(window)
    if getattr(args, "rope_offset", None) is not None:
        out["rope_offset"] = args.rope_offset
    if getattr(args, "rope_tables", None) is not None:
        out["rope_tables"] = args.rope_tables
    return out


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a policy: VLM config (transformers' Qwen3VLConfig kwargs) + expert + I/O."""

    name: str
    vlm: dict
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    chunk_len: int = 30  # T
    action_dim: int = PADDED_DIM  # D (padded)
    state_dim: int = PADDED_DIM
    image_size: tuple[int, int] = (256, 256)  # (H, W), multiples of 32
    cameras: tuple[str, ...] = ("Base View", "Left-Wrist View")
    num_steps: int = 5  # Euler steps at inference
    control_hz: float = 30.0
    max_prefix: int = MAX_PREFIX  # longest clean action prefix seen in async training; 0 = not trained with prefixes
    rope_tables: str = "fp32"  # precision of the rotary inv_freq tables (ROPE_TABLES)
    embedding_seed: int = 0  # the token embedding starts as a pure function of this seed (see seeded_embedding)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown policy config field(s): {sorted(unknown)}")
        d["expert"] = ExpertConfig(**d.get("expert", {}))
        d["image_size"] = tuple(d.get("image_size", (256, 256)))
        d["cameras"] = tuple(d.get("cameras", ()))
        return cls(**d)

    def check_executor(self, executor: str) -> None:
        """Refuse the async executor (a trained clean prefix) for a checkpoint never trained with prefixes."""
        if executor == "async" and self.max_prefix == 0:
            raise ValueError("this checkpoint was not trained with action prefixes (max_prefix 0, e.g. a release "
                             "folder or a post-sync run), so --executor async would feed it a clean prefix it never "
                             "saw; use --executor rtc (inference-time guidance needs no prefix training) or sync")

    def _holder(self, key: str):
        """The dataclass that holds a runtime field: the expert config or this one."""
        return self.expert if hasattr(self.expert, key) else self

    def runtime(self) -> dict:
        """The RUNTIME_FIELDS as a dict (what `xr0 inspect` shows)."""
        return {key: getattr(self._holder(key), key) for key in RUNTIME_FIELDS}

    def override(self, **settings) -> "PolicyConfig":
        """Set RUNTIME_FIELDS in place (e.g. from_pretrained(path, local_window=4)); unknown names are an error."""
        bad = sorted(set(settings) - set(RUNTIME_FIELDS))
        if bad:
            raise ValueError(f"unknown runtime setting(s) {bad}; choose from {list(RUNTIME_FIELDS)}")
        for key, value in settings.items():
            setattr(self._holder(key), key, value)
        self.validate()
        return self

    @property
    def text(self) -> dict:
        return self.vlm["text_config"]

    def validate(self) -> None:
        t, e = self.text, self.expert
        kv = t["num_key_value_heads"]
        if e.head_dim != t["head_dim"] or e.num_heads % kv:
            raise ValueError(
                f"expert heads x head_dim ({e.num_heads}x{e.head_dim}) must be a multiple of the VLM's KV heads "
                f"x the same head_dim ({kv}x{t['head_dim']}): each VLM K/V head serves num_heads / kv_heads queries"
            )
        if e.local_window is not None and e.local_window < 0:
            raise ValueError(f"local_window must be >= 0 or None (plain causal), got {e.local_window}")
        if e.rope_offset < 0:
            raise ValueError(f"rope_offset must be >= 0, got {e.rope_offset}")
        if self.rope_tables not in ROPE_TABLES:
            raise ValueError(f"rope_tables must be one of {ROPE_TABLES}, got {self.rope_tables!r}")
        if self.max_prefix < 0:
            raise ValueError(f"max_prefix must be >= 0, got {self.max_prefix}")
        if e.num_layers > t["num_hidden_layers"]:
            raise ValueError(f"expert has {e.num_layers} layers but the VLM only {t['num_hidden_layers']}")
        unit = 32  # patch 16 x spatial merge 2
        if self.image_size[0] % unit or self.image_size[1] % unit:
            raise ValueError(f"image_size {self.image_size} must be multiples of {unit}")
        if not self.cameras:
            raise ValueError("at least one camera is required")


def _vlm(text: dict, vision: dict) -> dict:
    head_dim = text["head_dim"]
    rope = dict(rope_type="default", rope_theta=5_000_000.0, mrope_interleaved=True)
    # mrope_section must sum to head_dim / 2; Qwen's [24, 20, 20] is for head_dim 128.
    half = head_dim // 2
    hw = (half * 5 // 16)
    rope["mrope_section"] = [24, 20, 20] if head_dim == 128 else [half - 2 * hw, hw, hw]
    text = dict(vocab_size=QWEN_VOCAB_SIZE, rms_norm_eps=1e-6, max_position_embeddings=262144,
                hidden_act="silu", rope_parameters=rope, **text)
    vision = dict(patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                  hidden_act="gelu_pytorch_tanh", out_hidden_size=text["hidden_size"], **vision)
    return dict(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
                vision_start_token_id=VISION_START_TOKEN_ID, vision_end_token_id=VISION_END_TOKEN_ID,
                tie_word_embeddings=True)


PRESETS: dict[str, PolicyConfig] = {
    # CPU unit tests: ~1M parameters outside the (real-vocabulary) token embedding.
    "tiny": PolicyConfig(
        name="tiny",
        vlm=_vlm(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16),
                 dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1])),
        expert=ExpertConfig(num_layers=2, hidden_size=32, intermediate_size=128, num_heads=2, head_dim=16,
                            time_embed_dim=32),
        chunk_len=10, image_size=(64, 64), control_hz=10.0,
    ),
    # CPU training and benchmarks: ~12M parameters outside the token embedding (< 25 MB in bf16).
    "small": PolicyConfig(
        name="small",
        vlm=_vlm(dict(hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=64),
                 dict(depth=4, hidden_size=128, intermediate_size=512, num_heads=4, num_position_embeddings=256,
                      deepstack_visual_indexes=[1, 3])),
        expert=ExpertConfig(num_layers=6, hidden_size=256, intermediate_size=768, num_heads=4, head_dim=64,
                            time_embed_dim=128),
        chunk_len=30, image_size=(128, 128), control_hz=30.0,
    ),
    # The released model: Qwen3-VL-4B-Instruct + a 16 x 1024 DiT (spec §2).
    "xr0-4b": PolicyConfig(
        name="xr0-4b",
        vlm=_vlm(dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128),
                 dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, num_position_embeddings=2304,
                      deepstack_visual_indexes=[5, 11, 17])),
        expert=ExpertConfig(),
        chunk_len=30, image_size=(256, 256), control_hz=30.0,
    ),
}


def get_preset(name: str) -> PolicyConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
