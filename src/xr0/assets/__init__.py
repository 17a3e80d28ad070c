"""Files shipped inside the package: the official layout table and the embedded MetaWorld checkpoint."""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).parent


def embedded_checkpoint() -> pathlib.Path:
    """The small MetaWorld policy trained by `make train-metaworld` (see docs/metaworld.md)."""
    path = HERE / "metaworld"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no embedded checkpoint at {path}: this build ships none yet "
                                "(train one with `make train-metaworld`)")
    return path
