"""SHA-256 digests of dataset files: xr0's writers record them, its readers check each file the first time they use it.

A byte flip inside a parquet page, an MP4 payload or a number in a JSON file often still parses and quietly changes
a sample; only a digest catches it. The manifest lives in the JSON document that describes the files (LeRobot v3:
`meta/info.json`; official JSON episodes: the episode's own JSON), under one key that other readers ignore::

    "xr0_integrity": {"algorithm": "sha256",
                      "content": <SHA-256 of the document itself, canonical JSON, without this field>,
                      "files": {<path relative to the dataset root / the JSON's folder>: <SHA-256 of the bytes>}}

`content` covers every other field of the document, the file digests included, so a damaged manifest is reported
against the document, never against a sound file. Datasets without the key (written by LeRobot, the official
release, or xr0 before this) are read as before, unchecked. A file changed on purpose by another tool invalidates
the manifest: remove the key to read such a dataset without checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from xr0.checkpoints import file_sha256

INTEGRITY_KEY = "xr0_integrity"
ALGORITHM = "sha256"


def content_sha256(doc: dict) -> str:
    """SHA-256 of a JSON document in canonical form (sorted keys, no spaces), without the manifest's `content`."""
    doc = dict(doc)
    if isinstance(doc.get(INTEGRITY_KEY), dict):
        doc[INTEGRITY_KEY] = {k: v for k, v in doc[INTEGRITY_KEY].items() if k != "content"}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(doc: dict, root: str | Path, files: list[str]) -> dict:
    """`doc` with a manifest of `files` (paths relative to `root`) and of its own content; what writers save."""
    root = Path(root)
    doc = json.loads(json.dumps(doc))  # the digest is of what a reader will parse back
    doc[INTEGRITY_KEY] = {"algorithm": ALGORITHM, "files": {f: file_sha256(root / f) for f in sorted(files)}}
    doc[INTEGRITY_KEY]["content"] = content_sha256(doc)
    return doc


class Digests:
    """The expected digest of each file under `root`, from the manifest in `source`; each file is hashed once."""

    def __init__(self, root: Path, files: dict[str, str], source: Path):
        self.root, self.files, self.source = Path(root), files, Path(source)
        self._checked: dict[str, str | None] = {}

    @classmethod
    def from_doc(cls, doc: dict, root: str | Path, source: str | Path) -> Digests | None:
        """The manifest of a parsed document, or None if it has none; a bad manifest or content raises ValueError."""
        if INTEGRITY_KEY not in doc:
            return None
        man = doc[INTEGRITY_KEY]
        if not isinstance(man, dict) or man.get("algorithm") != ALGORITHM or not isinstance(man.get("content"), str):
            raise ValueError(f"malformed {INTEGRITY_KEY!r} (expected algorithm {ALGORITHM!r}, content and files)")
        files = man.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError(f"malformed {INTEGRITY_KEY!r}.files (expected {{relative path: sha256}})")
        if content_sha256(doc) != man["content"]:
            raise ValueError(f"content does not match its SHA-256 in {INTEGRITY_KEY!r}: the file was changed or "
                             f"damaged after it was written (if another tool rewrote it on purpose, delete "
                             f"{INTEGRITY_KEY!r} to read the dataset unchecked)")
        return cls(Path(root), files, Path(source))

    def check(self, path: str | Path) -> str | None:
        """Why `path` does not match its recorded digest (None when it matches); hashes it on the first call only."""
        key = str(path)
        if key not in self._checked:
            path = Path(path)
            try:
                rel = path.relative_to(self.root).as_posix()
            except ValueError:
                rel = key
            self._checked[key] = self._check(path, rel)
        return self._checked[key]

    def _check(self, path: Path, rel: str) -> str | None:
        expected = self.files.get(rel)
        if expected is None:
            return f"{rel} is not listed in the SHA-256 manifest of {self.source} ({INTEGRITY_KEY!r})"
        try:
            actual = file_sha256(path)
        except OSError as err:
            return f"cannot read {rel} to check its SHA-256: {err}"
        if actual != expected:
            return (f"SHA-256 {actual[:12]}... differs from {expected[:12]}... recorded in {self.source}: the file "
                    f"was changed or damaged after it was written (if another tool rewrote it on purpose, delete "
                    f"{INTEGRITY_KEY!r} from {self.source.name} to read the dataset unchecked)")
        return None
