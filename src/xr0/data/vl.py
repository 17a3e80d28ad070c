"""Vision-language samples for co-training (spec §4): one JSON object per line of a JSONL file.

Line format: {"images": [paths relative to the JSONL file, or absolute], "question": str, "answer": str}.
Lines are parsed and image paths checked at construction (cheap); images decode on access.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from xr0.data import DataError, Skipped


class VLDataset:
    """Indexable VL samples `{"images": [uint8 (H, W, 3)], "question": str, "answer": str}`.

    A bad line raises DataError naming the file and line ("episode" is the 1-based line number);
    with `skip_bad=True` it is skipped and listed in `skipped`.
    """

    def __init__(self, jsonl: str | Path | list, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.skipped: list[Skipped] = []
        self._records: list[tuple[Path, int, list[Path], str, str]] = []
        for path in jsonl if isinstance(jsonl, (list, tuple)) else [jsonl]:
            self._read(Path(path))

    def _bad(self, line: int, file: Path, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{file}: episode (line) {line}: {reason}")
        self.skipped.append(Skipped(line, str(file), reason))

    def _read(self, path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise DataError(f"{path}: cannot read VL file (all lines): {err}") from err
        for no, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except ValueError as err:
                self._bad(no, path, f"invalid JSON: {err}")
                continue
            if not isinstance(rec, dict):
                self._bad(no, path, "line is not a JSON object")
                continue
            images, question, answer = rec.get("images", []), rec.get("question"), rec.get("answer")
            if not isinstance(question, str) or not isinstance(answer, str) or not question.strip():
                self._bad(no, path, "missing 'question' or 'answer' string")
                continue
            if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
                self._bad(no, path, "'images' must be a list of paths")
                continue
            files = [p if p.is_absolute() else path.parent / p for p in map(Path, images)]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                self._bad(no, path, f"missing image file(s) {missing}")
                continue
            self._records.append((path, no, files, question, answer))

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> dict:
        path, no, files, question, answer = self._records[i]
        images = []
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except OSError as err:
                raise DataError(f"{f}: episode (line) {no} of {path}: cannot decode image: {err}") from err
        return {"images": images, "question": question, "answer": answer}
