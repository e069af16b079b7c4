"""Model bundles: the only form in which the runtime accepts a model.

A bundle is a folder with `manifest.json` listing every file with its size and sha256, where the
model came from (source architecture, config hash), its prompt format, quantization and the
fidelity figures measured when it was converted. `convert` writes bundles; the runtime only reads
them and refuses one whose files do not hash to what the manifest says — a workstation must never
answer with a model nobody verified.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli import APP_NAME
from huatuo_cli.atomic import write_atomic
from huatuo_cli.errors import HuatuoError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file (hashlib releases the GIL, so files hash in parallel threads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle; `role` says what the runtime uses it for (llm, vision-fp32, mmproj, ...)."""

    path: str
    role: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What `manifest.json` holds. Unknown keys are kept so newer converters stay readable."""

    model_id: str
    architecture: str
    source: dict[str, Any]
    prompt_format: str
    quantization: str
    files: list[BundleFile]
    fidelity: dict[str, Any] = field(default_factory=dict)
    vision: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {
            "version": self.version,
            "model_id": self.model_id,
            "created": self.created,
            "architecture": self.architecture,
            "source": self.source,
            "prompt_format": self.prompt_format,
            "quantization": self.quantization,
            "files": [vars(f) for f in self.files],
            "fidelity": self.fidelity,
            "vision": self.vision,
            "llm": self.llm,
            "tools": self.tools,
            **self.extra,
        }
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        known = {"version", "model_id", "created", "architecture", "source", "prompt_format", "quantization",
                 "files", "fidelity", "vision", "llm", "tools"}
        files = [BundleFile(**f) for f in data["files"]]
        return cls(
            version=int(data["version"]), model_id=data["model_id"], created=data.get("created", ""),
            architecture=data["architecture"], source=data["source"], prompt_format=data["prompt_format"],
            quantization=data["quantization"], files=files, fidelity=data.get("fidelity", {}),
            vision=data.get("vision", {}), llm=data.get("llm", {}), tools=data.get("tools", {}),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def file(self, role: str) -> BundleFile | None:
        return next((f for f in self.files if f.role == role), None)


def describe_files(root: Path, roles: dict[str, str]) -> list[BundleFile]:
    """BundleFile entries (size, sha256) for `roles` = {relative path: role}, hashed in parallel."""
    paths = list(roles)
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(paths)))) as pool:
        digests = list(pool.map(lambda p: sha256_file(root / p), paths))
    return [BundleFile(path=p, role=roles[p], size=(root / p).stat().st_size, sha256=d) for p, d in zip(paths, digests, strict=True)]


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename): a bundle is either complete or absent."""
    return write_atomic(Path(root) / MANIFEST_NAME, manifest.to_json())


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest
    manifest_sha256: str

    def path(self, role: str) -> Path:
        entry = self.manifest.file(role)
        if entry is None:
            raise HuatuoError(f"bundle {self.root.name} has no '{role}' file", hint="re-create it with `huatuo convert all`")
        return self.root / entry.path

    def has(self, role: str) -> bool:
        return self.manifest.file(role) is not None


def read_manifest(root: Path) -> tuple[Manifest, str]:
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir() or not path.is_file():
        raise HuatuoError(
            f"{root} is not a model bundle (no {MANIFEST_NAME})",
            hint="make one with `huatuo convert all SRC OUT` on the conversion server, or install a bundle",
        )
    raw = path.read_bytes()
    try:
        manifest = Manifest.from_json(raw.decode("utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise HuatuoError(f"{path} is not a valid manifest ({exc.__class__.__name__}: {exc})") from exc
    if manifest.version > MANIFEST_VERSION:
        raise HuatuoError(f"bundle manifest version {manifest.version} is newer than this huatuo understands",
                          hint="upgrade huatuo-cli")
    return manifest, hashlib.sha256(raw).hexdigest()


def _file_state(path: Path) -> list[int]:
    """What must stay the same for a cached hash to stand: any write to the file changes ctime."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class VerifiedCache:
    """sha256 results of earlier full verifications, keyed by file identity and change time.

    Re-hashing a 7B bundle (~7 GB) costs seconds on every `ask`; a file whose inode, size, mtime and
    ctime are unchanged since it last hashed right is not read again. Writing to a file (even one
    byte, even with its mtime put back) changes its ctime, so such a file is re-hashed and refused.
    `huatuo models verify` never uses the cache.
    """

    def __init__(self, path: Path | None = None, *, trust: bool = True) -> None:
        """`trust=False` records fresh results without answering from earlier ones (a full re-hash)."""
        import platformdirs

        self.trust = trust
        self.path = path or Path(platformdirs.user_cache_dir(APP_NAME)) / "verified-files.json"
        try:
            self.entries: dict[str, list[Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def holds(self, path: Path, sha256: str) -> bool:
        if not self.trust:
            return False
        try:
            return self.entries.get(str(path.resolve())) == _file_state(path) + [sha256]
        except OSError:
            return False

    def remember(self, paths: dict[Path, str]) -> None:
        for path, digest in paths.items():
            self.entries[str(path.resolve())] = _file_state(path) + [digest]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(self.entries))
        except (OSError, HuatuoError):
            pass  # a cache that cannot be written only costs time


def verify_files(root: Path, manifest: Manifest, cache: VerifiedCache | None = None) -> list[str]:
    """Problems found (missing file, wrong size, wrong sha256), one line each naming the file."""

    def check(entry: BundleFile) -> str | None:
        path = Path(root) / entry.path
        if not path.is_file():
            return f"{entry.path}: missing"
        if path.stat().st_size != entry.size:
            return f"{entry.path}: size {path.stat().st_size} differs from the manifest's {entry.size}"
        if cache is not None and cache.holds(path, entry.sha256):
            return None
        if sha256_file(path) != entry.sha256:
            return f"{entry.path}: sha256 differs from the manifest (file modified or corrupt)"
        return None

    with ThreadPoolExecutor(max_workers=min(4, max(1, len(manifest.files)))) as pool:
        problems = [p for p in pool.map(check, manifest.files) if p]
    if cache is not None and not problems:
        cache.remember({Path(root) / f.path: f.sha256 for f in manifest.files})
    return problems


def load_bundle(root: Path | str, *, verify: bool = True, use_cache: bool = True) -> Bundle:
    """Read a bundle and (by default) check every file's sha256; refuse it on any mismatch.

    Files unchanged since they last hashed right are taken from `VerifiedCache` unless `use_cache`
    is false.
    """
    root = Path(root)
    manifest, digest = read_manifest(root)
    if verify:
        problems = verify_files(root, manifest, VerifiedCache() if use_cache else None)
        if problems:
            raise HuatuoError(
                f"model bundle {root.name} failed verification: " + "; ".join(problems),
                hint="re-copy the bundle from the conversion server; never edit bundle files",
            )
    return Bundle(root=root, manifest=manifest, manifest_sha256=digest)
