"""Official Xiaomi-Robotics-0 release folders (the Hugging Face `mibot` remote-code layout) -> xr0 (spec §9.2-9.3).

A release folder holds `config.json` (model_type "mibot", a nested `vlm_config` = a transformers-4.57 Qwen3VLConfig
dict), sharded safetensors with `model.safetensors.index.json`, the tokenizer/chat-template files and the processor's
per-robot-type statistics. The modeling/processing code is remote code that xr0 never runs: everything is mapped
explicitly here, and every assumption about a file we could not read is written down in `ASSUMPTIONS` below (and in the
README). Loading is strict: a missing, unexpected or mis-shaped tensor is an error that lists them.

Checkpoints saved by the April post-training code (DeepSpeed `mp_rank_00_model_states.pt`, whose `module` dict holds
the tensors) convert too: they are read with `torch.load(weights_only=True)`, tensors only, never code.

`xr0 convert --official DIR --out DIR` (xr0/convert.py) writes xr0's own format (config.json with "format": "xr0", one
model.safetensors, normalization.safetensors), which `XR0Policy.from_pretrained` then loads without this module.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .config import APRIL_RUNTIME, PADDED_DIM, RELEASE_RUNTIME, ExpertConfig, PolicyConfig, get_preset
from .processing.images import RELEASE_MAX_PIXELS, RELEASE_MIN_PIXELS, RESAMPLE, ImageSpec
from .processing.normalize import RobotSpec

CONFIG, INDEX, SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
DEEPSPEED = "mp_rank_00_model_states.pt"  # the April training code's checkpoint: {"module": {"model.<name>": tensor}}
DEEPSPEED_PLACES = (DEEPSPEED, "checkpoint/" + DEEPSPEED, "last.ckpt/checkpoint/" + DEEPSPEED)  # in a run folder
MODEL_TYPE = "mibot"
MASK_STD = 1e-5  # the release processor's get_action_mask: dims whose action std exceeds this
# Where the processor's statistics may live, in the order they are searched (first file with robot types wins).
STATS_FILES = ("preprocessor_config.json", "processor_config.json", "norm_stats.json", "statistics.json",
               "dataset_statistics.json")
# Keys under which a file may hold its robot-type table (else: top-level keys that are robot types).
STATS_TABLE_KEYS = ("action_config", "robot_types", "norm_stats", "statistics", "stats", "robot_stats", "action_stats",
                    "robot_type_stats")

ASSUMPTIONS = """\
How xr0 reads an official folder (facts from the release's processing_mibot.py / modeling_mibot.py, of which a
verbatim copy is public, and from the official clients; where a layout is not the release's, what xr0 assumes):
1. config.json: model_type "mibot" (or a `vlm_config` key) marks an official folder; `vlm_config` is a
   Qwen3VLConfig dict in transformers-4.57 style (text_config.rope_theta + rope_scaling{mrope_section,
   mrope_interleaved}); it is converted to 5.x `rope_parameters`. `action_length` is only a fallback for the chunk
   length: the released CALVIN checkpoint says 30 while its statistics/mask are 10 long, so the stats win.
   tie_word_embeddings (top level, else text_config) defaults to true: Qwen3-VL-4B ties them and the release
   stores no lm_head.
2. Tensor names: the non-VLM names of xr0/assets/official_layout.tsv; the VLM under `vlm.` with transformers-4.57
   Qwen3VLForConditionalGeneration names `vlm.model.language_model.*` / `vlm.model.visual.*` (a third-party strict
   load of the CALVIN release used exactly these plus a re-tied `vlm.lm_head.weight`: 932 stored + 1 tied = 933).
   Also accepted and remapped: `vlm.language_model.*`, `vlm.visual.*` (a Qwen3VLModel under `vlm`), the pre-4.52
   `vlm.model.{layers,embed_tokens,norm}.*` / `vlm.visual.*`, and a DeepSpeed-style leading `model.`.
3. Expert dims come from the tensor shapes (hidden = sink width, layers = count of dit.layers.N, head_dim = q_norm
   width, heads = hidden / head_dim, intermediate = gate_proj rows, time-embedding width = t_embedder.mlp.0 columns,
   action/state width = projector columns).
4. Statistics: the release keeps them in preprocessor_config.json's top-level `action_config`:
   {robot_type: {"mean": (T, 32), "std": (T, 32)}}; T, the rows, is that robot type's chunk length, and robot
   types may differ (the Pretrain release: 15 and 30). Also read: the first of preprocessor_config.json,
   processor_config.json, norm_stats.json, statistics.json, dataset_statistics.json holding a robot-type table
   under one of the keys robot_types / norm_stats / statistics / stats / robot_stats / action_stats /
   robot_type_stats, or robot-type names at the top level (or a file given with --stats); per robot type action
   mean/std as `action_mean`/`action_std`, `mean`/`std`, or `action: {mean, std}`, shaped (T, d) or (d,) for every
   step (d <= 32, padded with mean 0 / std 1). Action mask: the release's get_action_mask, std > 1e-5 (on the
   columns given), unless an `action_mask` ((32,), (T, 32) or (1, T, 32); rows must agree) is given. State: raw
   (the clients zero-pad it to 32), unless `state_mean`/`state_std` or `state: {mean, std}` are given; optional
   `action_dim`/`state_dim`/`cameras`/`delta_dims`. Normalisation (training) is (x - mean) / (std + 1e-6).
5. Decoding: the release's decode_action is `x * std + mean` on all 32 columns (no epsilon, no mask, no extra
   column); xr0 returns the robot's action_dim columns of it. A DeepSpeed checkpoint decodes as the April
   post-training server, denormalize_action(x * mask) * mask with std + 1e-6 (masked dims 0).
6. Per robot type (when the stats do not say): libero_all 7 actions / 8 state (eef pos, axis-angle, 2 finger
   qpos), cameras Base View + Left-Wrist View (clients send 256x256); calvin_*_orig 7 / 7, same cameras (200x200
   and 84x84); bridge_delta 7 / 8, Base View (256x256); fractal_delta 7 / 8, Ego View (256x320, HxW); their
   first 6 action dims are end-effector deltas (a held tick sends 0 there), the gripper absolute. Unknown robot
   types get 32 / 32, the two-view layout and no delta dims. The config's top-level cameras / image size are the
   first robot type's (a default for tools that need one).
7. Runtime settings (written into the converted checkpoint; --dit-window/--rope-offset/--rope-tables override):
   a release folder runs as the Hugging Face runtime of the released checkpoints does: plain causal DiT mask,
   no RoPE offset, fp32 rotary tables, no trained prefix (so --executor async is refused; rtc works). A DeepSpeed
   checkpoint of the April post-training code runs as that code does: the w = 4 band, the +10 offset on noisy
   action tokens, rotary tables rounded to bf16 (its `_build_model` ends in `.to(torch.bfloat16)`), prefixes up
   to 6 (its async_train draws 1..6).
8. DeepSpeed checkpoints (--official FILE.pt, or a run folder holding mp_rank_00_model_states.pt,
   checkpoint/... or last.ckpt/checkpoint/...): read with torch.load(weights_only=True); the tensors are the
   `module` dict under a leading `model.`. The VLM config is Qwen3-VL-4B-Instruct's (the April code builds that
   model) unless --vlm-config names a Qwen3VLConfig JSON or a release config.json (its vlm_config); the
   statistics must be given with --stats (the April code keeps them in its Python config.py, which xr0 never runs).
9. Images: the release server loads the slow Qwen2VLImageProcessor (use_fast=False): smart_resize to multiples of
   32 keeping each camera's aspect ratio, the `resample` filter (3 = bicubic), mean/std 0.5, each image repeated to
   2 frames; <|image_pad|> tokens per view = the grid's patches / 4. The pixel budget is preprocessor_config's
   min_pixels / max_pixels when it gives them; with `size` alone transformers 4.57.1's slow processor replaces
   `size` in its __init__ and uses 3136..1003520 pixels (224x224 stays 224x224, 200x200 becomes 192x192,
   360x480 becomes 352x480).
10. Tokenizer: the folder's own (tokenizer.json, or vocab.json + merges.txt with tokenizer_config.json's added
   tokens) when present, else xr0's built-in Qwen3-VL tokenizer (the same ids).
"""


@dataclass(frozen=True)
class RobotDefaults:
    action_dim: int
    state_dim: int
    cameras: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W)
    control_hz: float
    delta_dims: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # end-effector deltas; the gripper (dim 6) is absolute


TWO_VIEWS = ("Base View", "Left-Wrist View")
ROBOT_DEFAULTS = {
    "libero_all": RobotDefaults(7, 8, TWO_VIEWS, (256, 256), 20.0),
    "calvin_abc_orig": RobotDefaults(7, 7, TWO_VIEWS, (256, 256), 30.0),
    "calvin_abcd_orig": RobotDefaults(7, 7, TWO_VIEWS, (256, 256), 30.0),
    "bridge_delta": RobotDefaults(7, 8, ("Base View",), (256, 256), 5.0),
    "fractal_delta": RobotDefaults(7, 8, ("Ego View",), (256, 320), 3.0),
}
UNKNOWN_ROBOT = RobotDefaults(PADDED_DIM, PADDED_DIM, TWO_VIEWS, (256, 256), 30.0, delta_dims=())


class OfficialFormatError(ValueError):
    """An official folder that does not match the documented layout; the message names the file and field."""


# ---------------------------------------------------------------------------------------------- detection
def _read_json(file: pathlib.Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise OfficialFormatError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise OfficialFormatError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def looks_official(meta: dict) -> bool:
    """A config.json written by the official release rather than by xr0."""
    return meta.get("format") != "xr0" and (meta.get("model_type") == MODEL_TYPE or "vlm_config" in meta)


def is_official(cfg_file: str | pathlib.Path) -> bool:
    """The from_pretrained hook's test; unreadable files say False so xr0's own error message reports them."""
    try:
        meta = json.loads(pathlib.Path(cfg_file).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and looks_official(meta)


# ---------------------------------------------------------------------------------------------- VLM config
_DROP = {"architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "auto_map",
         "use_cache", "attn_implementation", "_attn_implementation", "output_attentions", "output_hidden_states",
         "return_dict", "id2label", "label2id"}


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _DROP}


def convert_vlm_config(vlm_config: dict) -> dict:
    """A 4.57-style Qwen3VLConfig dict -> the transformers-5.x kwargs xr0 stores (rope_theta/rope_scaling ->
    rope_parameters; bookkeeping keys dropped; tie_word_embeddings made explicit)."""
    if not isinstance(vlm_config, dict):
        raise OfficialFormatError(f"config.json field 'vlm_config' must be an object, got {type(vlm_config).__name__}")
    cfg = copy.deepcopy(vlm_config)
    for sub in ("text_config", "vision_config"):
        if not isinstance(cfg.get(sub), dict):
            raise OfficialFormatError(f"config.json field 'vlm_config.{sub}' is missing or not an object")
    text = _clean(cfg["text_config"])
    text.pop("model_type", None)
    if "rope_parameters" not in text:
        scaling = text.pop("rope_scaling", None) or {}
        if not isinstance(scaling, dict):
            raise OfficialFormatError("config.json field 'vlm_config.text_config.rope_scaling' must be an object")
        if "rope_theta" not in text and "rope_theta" not in scaling:
            raise OfficialFormatError("config.json: vlm_config.text_config has neither rope_theta nor rope_parameters")
        if "mrope_section" not in scaling:
            # transformers silently defaults to [24, 20, 20], which truncates any head_dim but 128
            raise OfficialFormatError("config.json: vlm_config.text_config.rope_scaling.mrope_section is missing")
        rope = {"rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                "rope_theta": float(text.pop("rope_theta", scaling.get("rope_theta"))),
                "mrope_section": list(scaling["mrope_section"]),
                "mrope_interleaved": bool(scaling.get("mrope_interleaved", False))}
        text["rope_parameters"] = rope
    else:
        text.pop("rope_scaling", None)
        text.pop("rope_theta", None)
    vision = _clean(cfg["vision_config"])
    vision.pop("model_type", None)
    tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    text.pop("tie_word_embeddings", None)
    out = {"text_config": text, "vision_config": vision}
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if key in cfg:
            out[key] = cfg[key]
    out["tie_word_embeddings"] = True if tie is None else bool(tie)
    return out


# ---------------------------------------------------------------------------------------------- tensors
_VLM_LAYOUTS = [  # (pattern, replacement), first match wins; the target is transformers' Qwen3VLForConditionalGeneration
    (re.compile(r"^vlm\.model\.(language_model|visual)\."), None),  # already xr0's names
    (re.compile(r"^vlm\.language_model\."), "vlm.model.language_model."),
    (re.compile(r"^vlm\.visual\."), "vlm.model.visual."),
    (re.compile(r"^vlm\.model\.(?=(layers|embed_tokens|norm|rotary_emb)\b)"), "vlm.model.language_model."),
]


def remap_key(name: str) -> str:
    """An official tensor name -> xr0's (documented in ASSUMPTIONS, item 2)."""
    for pattern, repl in _VLM_LAYOUTS:
        if pattern.search(name):
            return name if repl is None else pattern.sub(repl, name, count=1)
    return name


def _strip_wrapper(names: list[str]) -> str:
    """A common DeepSpeed/Lightning prefix ('model.' / 'module.') in front of `vlm.`/`dit.` names, else ''."""
    for prefix in ("module.model.", "model.", "module."):
        if names and all(n.startswith(prefix) for n in names) and any(
                n[len(prefix):].startswith(("dit.", "vlm.")) for n in names):
            return prefix
    return ""


def weight_map(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name (as stored) -> shard file, from model.safetensors.index.json (or a single model.safetensors)."""
    index_file = path / INDEX
    if index_file.is_file():
        index = _read_json(index_file)
        wm = index.get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise OfficialFormatError(f"{index_file} has no 'weight_map' object")
        shards = {name: path / shard for name, shard in wm.items()}
        missing = sorted({str(f.name) for f in shards.values() if not f.is_file()})
        if missing:
            raise OfficialFormatError(f"{index_file} names shard file(s) that are not in {path}: {missing}")
        return shards
    single = path / SINGLE
    if single.is_file():
        with safe_open(str(single), "pt") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"{path} has neither {INDEX} nor {SINGLE}: no weights to load")


def tensor_shapes(shards: dict[str, pathlib.Path]) -> dict[str, tuple[int, ...]]:
    """Shapes from the safetensors headers only (no tensor data is read); checks the index against the shards."""
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[pathlib.Path, list[str]] = {}
    for name, file in shards.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(str(file), "pt") as f:
                present = set(f.keys())
                absent = sorted(set(names) - present)
                if absent:
                    raise OfficialFormatError(f"{file.name} lacks tensor(s) the index assigns to it: {absent[:20]}")
                for name in names:
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except OfficialFormatError:
            raise
        except Exception as e:  # safetensors' own error types for truncated / corrupt headers
            raise OfficialFormatError(f"{file} is not a readable safetensors file: {e}") from e
    return shapes


def expert_from_shapes(shapes: dict[str, tuple[int, ...]]) -> tuple[ExpertConfig, int, int]:
    """(ExpertConfig, action width, state width) read off the stored expert tensors (ASSUMPTIONS item 3)."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise OfficialFormatError(f"checkpoint lacks expert tensor {name!r}; cannot infer the expert's size")
        return shapes[name]

    layers = sorted({int(m.group(1)) for n in shapes if (m := re.match(r"dit\.layers\.(\d+)\.", n))})
    if not layers or layers != list(range(len(layers))):
        raise OfficialFormatError(f"checkpoint has no contiguous dit.layers.N tensors (found layers {layers[:20]})")
    hidden = shape("sink.weight")[1]
    head_dim = shape("dit.layers.0.attn.q_norm.weight")[0]
    if hidden % head_dim:
        raise OfficialFormatError(f"expert width {hidden} is not a multiple of head_dim {head_dim}")
    cfg = ExpertConfig(num_layers=len(layers), hidden_size=hidden,
                       intermediate_size=shape("dit.layers.0.mlp.gate_proj.weight")[0],
                       num_heads=hidden // head_dim, head_dim=head_dim,
                       time_embed_dim=shape("t_embedder.mlp.0.weight")[1])
    return cfg, shape("action_projector.layers.0.weight")[1], shape("state_projector.layers.0.weight")[1]


# ---------------------------------------------------------------------------------------------- statistics
def _arr(name: str, value, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise OfficialFormatError(f"{where}: field {name!r} is not numeric: {e}") from e
    if not np.isfinite(arr).all():
        raise OfficialFormatError(f"{where}: field {name!r} contains NaN or inf")
    return arr


def _pick(entry: dict, *paths: str):
    """The first present value among dotted paths ('action.mean' = entry['action']['mean'])."""
    for p in paths:
        node, ok = entry, True
        for part in p.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                ok = False
                break
        if ok:
            return node
    return None


def find_stats_table(path: pathlib.Path, stats_file: str | pathlib.Path | None = None) -> tuple[dict, pathlib.Path]:
    """(robot type -> raw entry, the file it came from), following ASSUMPTIONS item 4."""
    candidates = [pathlib.Path(stats_file)] if stats_file else [path / f for f in STATS_FILES]
    looked = []
    for file in candidates:
        if not file.is_file():
            if stats_file:
                raise FileNotFoundError(f"statistics file {file} not found")
            continue
        looked.append(file.name)
        data = _read_json(file)
        for key in STATS_TABLE_KEYS:
            if isinstance(data.get(key), dict) and data[key]:
                return data[key], file
        top = {k: v for k, v in data.items() if isinstance(v, dict) and (k in ROBOT_DEFAULTS or
                                                                         _pick(v, "action_mean", "mean", "action.mean") is not None)}
        if top:
            return top, file
    raise OfficialFormatError(
        f"no per-robot-type statistics found in {path} (looked in {looked or list(STATS_FILES)} for one of the keys "
        f"{list(STATS_TABLE_KEYS)}); pass the statistics file explicitly (xr0 convert --stats FILE)")


def _per_step(name: str, arr: np.ndarray, T: int | None, fill: float, where: str) -> np.ndarray:
    """(T, d) or (d,) -> (T, 32), padding the unused dims with `fill`."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        if T is None:
            raise OfficialFormatError(f"{where}: {name!r} has no time axis and the chunk length is unknown "
                                      f"(give per-timestep stats, an action_mask (T, 32) or config.json action_length)")
        arr = np.broadcast_to(arr, (T, arr.shape[0]))
    if arr.ndim != 2 or arr.shape[1] > PADDED_DIM:
        raise OfficialFormatError(f"{where}: {name!r} must be (T, d<=32) or (d,), got {arr.shape}")
    out = np.full((arr.shape[0], PADDED_DIM), fill, np.float32)
    out[:, : arr.shape[1]] = arr
    return out


def robot_spec(name: str, entry: dict, fallback_T: int | None, where: str,
               image: ImageSpec | None = None, decode: str = "release") -> RobotSpec:
    """One robot type's RobotSpec from its raw statistics entry (cameras: its `cameras` list, else ROBOT_DEFAULTS';
    images as `image`, the folder's processor settings; decoded as `decode`: normalize.DECODES)."""
    if not isinstance(entry, dict):
        raise OfficialFormatError(f"{where}: robot type {name!r} must map to an object, got {type(entry).__name__}")
    where = f"{where} [{name}]"
    defaults = ROBOT_DEFAULTS.get(name, UNKNOWN_ROBOT)
    mean = _pick(entry, "action_mean", "mean", "action.mean")
    std = _pick(entry, "action_std", "std", "action.std")
    if mean is None or std is None:
        raise OfficialFormatError(f"{where}: needs action mean and std (action_mean/action_std, mean/std or "
                                  f"action.mean/action.std); has keys {sorted(entry)}")
    mean, std = _arr("action_mean", mean, where), _arr("action_std", std, where)
    mask_raw = _pick(entry, "action_mask", "mask", "action.mask")
    mask_arr = None if mask_raw is None else _arr("action_mask", mask_raw, where)
    given_width = std.shape[-1]
    T = fallback_T
    for arr in (mean, std, mask_arr):
        if arr is not None and arr.ndim >= 2:
            T = arr.shape[-2]
            break
    mean = _per_step("action_mean", mean, T, 0.0, where)
    std = _per_step("action_std", std, T, 1.0, where)
    if mean.shape != std.shape:
        raise OfficialFormatError(f"{where}: action_mean {mean.shape} and action_std {std.shape} differ")
    if (std < 0).any():
        raise OfficialFormatError(f"{where}: action_std has negative entries")
    action_dim = entry.get("action_dim")
    if mask_arr is not None:
        m = mask_arr.reshape(-1, mask_arr.shape[-1]) if mask_arr.ndim > 1 else mask_arr[None]
        if m.shape[1] != PADDED_DIM:
            raise OfficialFormatError(f"{where}: action_mask must have {PADDED_DIM} columns, got {m.shape}")
        if not (m == m[0]).all():
            raise OfficialFormatError(f"{where}: action_mask differs between timesteps; xr0 needs one (32,) mask")
        mask = (m[0] != 0).astype(np.float32)
        if action_dim is None:
            active = np.flatnonzero(mask)
            action_dim = int(active[-1]) + 1 if active.size else defaults.action_dim
    else:  # the release processor's get_action_mask: std > 1e-5, on the columns the statistics give
        active = std[:, :given_width] > MASK_STD
        if not (active == active[0]).all():
            raise OfficialFormatError(f"{where}: action_std > {MASK_STD} (the release's action mask) differs "
                                      f"between timesteps; xr0 needs one (32,) mask: give action_mask")
        mask = np.zeros(PADDED_DIM, np.float32)
        mask[:given_width] = active[0]
        if action_dim is None:
            on = np.flatnonzero(mask)
            action_dim = int(on[-1]) + 1 if on.size else defaults.action_dim
    s_mean = _pick(entry, "state_mean", "state.mean")
    s_std = _pick(entry, "state_std", "state.std")
    state_mean, state_std = np.zeros(PADDED_DIM, np.float32), np.ones(PADDED_DIM, np.float32)
    if (s_mean is None) != (s_std is None):
        raise OfficialFormatError(f"{where}: give both state mean and state std, or neither")
    if s_mean is not None:
        sm, ss = _arr("state_mean", s_mean, where).reshape(-1), _arr("state_std", s_std, where).reshape(-1)
        if sm.shape != ss.shape or sm.shape[0] > PADDED_DIM:
            raise OfficialFormatError(f"{where}: state mean/std must be (d<=32,), got {sm.shape} / {ss.shape}")
        state_mean[: sm.shape[0]], state_std[: ss.shape[0]] = sm, ss
    state_dim = int(entry.get("state_dim", defaults.state_dim))
    cameras = entry.get("cameras", defaults.cameras)
    if not isinstance(cameras, (list, tuple)) or not cameras or not all(isinstance(c, str) for c in cameras):
        raise OfficialFormatError(f"{where}: 'cameras' must be a non-empty list of view titles, got {cameras!r}")
    try:
        delta = [d for d in entry.get("delta_dims", defaults.delta_dims) if d < int(action_dim)]
        return RobotSpec(mean, std, mask, state_mean, state_std, int(action_dim), state_dim, tuple(cameras), image,
                         decode, tuple(delta))
    except ValueError as e:
        raise OfficialFormatError(f"{where}: {e}") from e


def image_spec(path: pathlib.Path) -> ImageSpec:
    """How the release processor sizes images, from the folder's preprocessor_config.json (ASSUMPTIONS item 9):
    smart_resize within its min_pixels / max_pixels, else transformers 4.57.1's 3136..1003520 (whatever `size`
    says), with its `resample` filter (bicubic by default)."""
    file = path / "preprocessor_config.json"
    data = _read_json(file) if file.is_file() else {}
    where = f"{file}" if file.is_file() else f"{path} (no preprocessor_config.json: the release defaults)"
    for key, want in (("patch_size", 16), ("merge_size", 2), ("temporal_patch_size", 2)):
        if data.get(key, want) != want:
            raise OfficialFormatError(f"{where}: {key} {data[key]} is not Qwen3-VL's {want}")
    for key in ("image_mean", "image_std"):
        if any(abs(v - 0.5) > 1e-9 for v in data.get(key, [0.5] * 3)):
            raise OfficialFormatError(f"{where}: {key} {data[key]} is not Qwen3-VL's [0.5, 0.5, 0.5]")
    resample = {v: k for k, v in RESAMPLE.items()}.get(data.get("resample", RESAMPLE["bicubic"]))
    if resample is None:
        raise OfficialFormatError(f"{where}: resample {data['resample']} is not one of {RESAMPLE}")
    try:
        return ImageSpec(min_pixels=int(data.get("min_pixels") or RELEASE_MIN_PIXELS),
                         max_pixels=int(data.get("max_pixels") or RELEASE_MAX_PIXELS), resample=resample)
    except ValueError as e:
        raise OfficialFormatError(f"{where}: {e}") from e


def stats_table_robots(path: pathlib.Path, fallback_T: int | None = None,
                       stats_file: str | pathlib.Path | None = None, decode: str = "release") -> dict[str, RobotSpec]:
    """Every robot type of the statistics table, each with its own chunk length (its rows), cameras and the
    folder's image settings; decoded as the release processor (or, for the April code, its server) does."""
    table, file = find_stats_table(path, stats_file)
    image = image_spec(path)
    return {name: robot_spec(name, entry, fallback_T, file.name, image, decode) for name, entry in table.items()}


# ---------------------------------------------------------------------------------------------- loading
def official_config(path: pathlib.Path, shapes: dict[str, tuple[int, ...]],
                    robots: dict[str, RobotSpec], meta: dict) -> PolicyConfig:
    """xr0's PolicyConfig for an official folder: VLM from vlm_config, expert from shapes, T from the stats."""
    if "vlm_config" not in meta:
        raise OfficialFormatError(f"{path / CONFIG} has no 'vlm_config' (the nested Qwen3VLConfig)")
    vlm = convert_vlm_config(meta["vlm_config"])
    expert, action_dim, state_dim = expert_from_shapes(shapes)
    first = ROBOT_DEFAULTS.get(next(iter(robots)), UNKNOWN_ROBOT)
    cfg = PolicyConfig(name=f"official:{path.name}", vlm=vlm, expert=expert,
                       chunk_len=next(iter(robots.values())).chunk_len, action_dim=action_dim, state_dim=state_dim,
                       image_size=first.image_size, cameras=first.cameras, control_hz=first.control_hz)
    try:
        cfg.validate()
    except ValueError as e:
        raise OfficialFormatError(f"{path / CONFIG}: the official config and tensors disagree: {e}") from e
    for name, spec in robots.items():
        if spec.action_mean.shape[1] != action_dim or spec.state_mean.shape[0] != state_dim:
            raise OfficialFormatError(f"robot type {name!r}: statistics are {spec.action_mean.shape[1]}/"
                                      f"{spec.state_mean.shape[0]} wide but the expert takes {action_dim}/{state_dim}")
    return cfg


def rename_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored names -> xr0's (a wrapper prefix stripped, VLM layouts remapped); two that map to one is an error."""
    prefix = _strip_wrapper(list(tensors))
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for name in list(tensors):
        new = remap_key(name[len(prefix):])
        if new in state:
            raise OfficialFormatError(f"tensors {origin[new]!r} and {name!r} both map to {new!r}")
        state[new], origin[new] = tensors.pop(name), name
    return state


def read_tensors(shards: dict[str, pathlib.Path]) -> dict[str, torch.Tensor]:
    """All tensors of a release folder, renamed to xr0's names."""
    stored: dict[str, torch.Tensor] = {}
    for file in sorted(set(shards.values())):
        try:
            tensors = load_file(str(file))
        except Exception as e:
            raise OfficialFormatError(f"{file} is not a readable safetensors file: {e}") from e
        stored.update({name: t for name, t in tensors.items() if shards.get(name) == file})  # strays ignored
    return rename_tensors(stored)


def release_robots(path: pathlib.Path, meta: dict | None = None,
                   stats_file: str | pathlib.Path | None = None) -> dict[str, RobotSpec]:
    """A release folder's robot types (statistics, chunk lengths, cameras, image settings), without its weights;
    config.json's `action_length` is only the fallback chunk length (ASSUMPTIONS item 1)."""
    meta = _read_json(path / CONFIG) if meta is None else meta
    fallback_T = meta.get("action_length") or meta.get("chunk_len")
    return stats_table_robots(path, int(fallback_T) if fallback_T else None, stats_file)


def read_release(path: str | pathlib.Path, stats_file: str | pathlib.Path | None = None,
                 **settings) -> tuple[PolicyConfig, dict[str, RobotSpec], dict[str, torch.Tensor]]:
    """(config, robots, tensors in xr0's names) of an official release folder (strict; see ASSUMPTIONS), the config
    set up as the release runtime runs it (config.RELEASE_RUNTIME) unless `settings` say otherwise (e.g.
    config.APRIL_RUNTIME). XR0Policy.from_pretrained(path) builds the policy from them."""
    path = pathlib.Path(path)
    meta = _read_json(path / CONFIG)
    if not looks_official(meta):
        raise OfficialFormatError(f"{path / CONFIG} is not an official config (model_type {meta.get('model_type')!r}, "
                                  f"no vlm_config)")
    shards = weight_map(path)
    prefix = _strip_wrapper(list(shards))
    shapes = {remap_key(n[len(prefix):]): s for n, s in tensor_shapes(shards).items()}
    robots = release_robots(path, meta, stats_file)
    config = official_config(path, shapes, robots, meta).override(**{**RELEASE_RUNTIME, **settings})
    return config, robots, read_tensors(shards)


def find_deepspeed(path: pathlib.Path) -> pathlib.Path | None:
    """The DeepSpeed model-states file that `path` is or holds (DEEPSPEED_PLACES), else None."""
    if path.is_file():
        return path if path.suffix == ".pt" else None
    return next((path / place for place in DEEPSPEED_PLACES if (path / place).is_file()), None)


def read_deepspeed(file: pathlib.Path) -> dict[str, torch.Tensor]:
    """The `module` tensors of a DeepSpeed model-states file, renamed to xr0's names (tensors only, never code)."""
    try:
        states = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error names the class a weights-only load refused
        raise OfficialFormatError(f"{file} cannot be read as tensors only (torch.load(weights_only=True)): {e}") from e
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not module:
        raise OfficialFormatError(f"{file} has no 'module' dict of tensors (keys: "
                                  f"{sorted(states)[:10] if isinstance(states, dict) else type(states).__name__})")
    bad = sorted(k for k, v in module.items() if not torch.is_tensor(v))
    if bad:
        raise OfficialFormatError(f"{file}: 'module' entries that are not tensors: {bad[:10]}")
    return rename_tensors(dict(module))


def deepspeed_vlm_config(vlm_config: str | pathlib.Path | None) -> dict:
    """The VLM config of an April-code checkpoint: Qwen3-VL-4B-Instruct's (the xr0-4b preset), or a file."""
    if vlm_config is None:
        return get_preset("xr0-4b").vlm
    data = _read_json(pathlib.Path(vlm_config))
    return data.get("vlm_config", data)


def read_april(file: str | pathlib.Path, stats_file: str | pathlib.Path | None,
               vlm_config: str | pathlib.Path | None = None,
               **settings) -> tuple[PolicyConfig, dict[str, RobotSpec], dict[str, torch.Tensor]]:
    """(config, robots, tensors) of a DeepSpeed checkpoint of the April post-training code (ASSUMPTIONS items 7-8),
    the config set up as that code runs it (config.APRIL_RUNTIME) unless `settings` say otherwise."""
    file = pathlib.Path(file)
    if stats_file is None:
        raise OfficialFormatError(f"{file}: a DeepSpeed checkpoint carries no statistics; give them with --stats FILE "
                                  f"(per robot type: action_mean/action_std (T, 32), optional action_mask)")
    state = read_deepspeed(file)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    robots = stats_table_robots(file.parent, None, stats_file, decode="masked")
    meta = {"vlm_config": deepspeed_vlm_config(vlm_config)}
    config = official_config(file.parent, shapes, robots, meta).override(**{**APRIL_RUNTIME, **settings})
    config.name = f"april:{file.parent.name}"
    return config, robots, state
