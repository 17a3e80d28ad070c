"""Where checkpoints live: a training run's folder layout, and resolving what a user names to one checkpoint folder.

A run folder holds checkpoints/step_NNNNNN/ (the policy files plus the trainer state) and checkpoints/latest naming
the newest complete one. `resolve_checkpoint` takes a checkpoint folder, a run folder (xr0's, or lerobot-train's
with the xr0 plugin) or "embedded" (the shipped MetaWorld policy). No xr0 imports at module level: every layer may
use it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

CONFIG, WEIGHTS = "config.json", "model.safetensors"  # a checkpoint folder's policy files (XR0Policy.save_pretrained)
# A policy folder saved by the LeRobot plugin (integrations/lerobot): config.json is LeRobot's, xr0's config sits
# beside it under this name; the weights and statistics are xr0's own files.
LEROBOT_XR0_CONFIG = "xr0_config.json"
LEROBOT_LAST = ("checkpoints", "last", "pretrained_model")  # lerobot-train's newest checkpoint in a run folder
CKPT_DIR, LATEST, STEP_FMT = "checkpoints", "latest", "step_{:06d}"
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"


def atomic_write(target: str | Path, write) -> None:
    """Write a file through `write(temporary_path)`, fsync it, then rename it over `target`: a crash mid-write
    leaves the previous file intact, and concurrent writers never share a temporary file."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(file: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 16 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def verify_manifest(folder: Path, manifest: dict) -> None:
    """Check each {file name: sha256} of a checkpoint's manifest; a mismatch names the file."""
    for name, digest in manifest.items():
        file = folder / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is listed in {folder / CONFIG}'s sha256 manifest but missing")
        actual = file_sha256(file)
        if actual != digest:
            raise ValueError(f"{file} does not match the sha256 manifest in {folder / CONFIG} (expected "
                             f"{digest[:16]}..., got {actual[:16]}...): the file was changed or corrupted after it "
                             f"was saved")


def is_complete(ckpt: Path) -> bool:
    return all((ckpt / f).is_file() for f in (CONFIG, WEIGHTS, STATE_JSON, STATE_TENSORS))


def find_latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint: the one `latest` names, else the highest complete step_* (temp dirs ignored)."""
    root = Path(out) / CKPT_DIR
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if cand.name.startswith("step_") and is_complete(cand):
            return cand
    steps = sorted((p for p in root.glob("step_*") if p.is_dir() and is_complete(p)), key=lambda p: p.name)
    return steps[-1] if steps else None


def hub_snapshot(repo_id: str) -> Path:
    """A Hugging Face repo id ("org/name") -> its snapshot in the local Hugging Face cache, never the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id}: not a folder here and not in the local Hugging Face cache (xr0 never "
                                f"downloads at run time); fetch it once with `hf download {repo_id}` (or "
                                f"`hf download {repo_id} --local-dir DIR` and pass DIR)") from e


def policy_config_file(folder: Path) -> Path:
    """xr0's config of a checkpoint folder: config.json, or LEROBOT_XR0_CONFIG in a LeRobot plugin's folder."""
    alt = Path(folder) / LEROBOT_XR0_CONFIG
    return alt if alt.is_file() else Path(folder) / CONFIG


def resolve_checkpoint(path: str | Path) -> Path:
    """"embedded", a checkpoint folder (config.json), a run folder whose latest checkpoint is taken, or a Hugging
    Face repo id ("XiaomiRobotics/Xiaomi-Robotics-0-LIBERO") found in the local cache."""
    if str(path) == "embedded":
        from .assets import embedded_checkpoint

        path = embedded_checkpoint()
    p = Path(path)
    if not p.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        p = hub_snapshot(str(path))
    if (p / CONFIG).is_file():
        return p
    if (p.joinpath(*LEROBOT_LAST) / LEROBOT_XR0_CONFIG).is_file():  # a lerobot-train run of the xr0 plugin
        return p.joinpath(*LEROBOT_LAST)
    latest = find_latest(p)
    if latest is None:
        raise FileNotFoundError(f"{p}: neither a checkpoint folder ({CONFIG}) nor a run with complete checkpoints")
    return latest
