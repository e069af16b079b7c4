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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huatuo_cli import APP_NAME
from huatuo_cli.atomic import write_atomic
from huatuo_cli.engine.gguf_tokens import MARKERS_KEY
from huatuo_cli.errors import HuatuoError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2  # 2: `model_id` (the folder name at conversion) renamed `bundle_name`
_CHUNK = 1 << 20
#: Roles every bundle must list: the runtime reads these files (and no unlisted one) on every answer.
REQUIRED_ROLES = ("llm", "vision-fp32", "preprocessor")
#: Permissions of a published bundle (docs/bundle.md): every file 0644, every folder 0755, readable by all.
#: A bundle holds no patient data; what protects it is its manifest's hashes, not secrecy.
BUNDLE_FILE_MODE = 0o644
BUNDLE_DIR_MODE = 0o755


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

    bundle_name: str  # the name given to the bundle at conversion (its folder may be renamed since)
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
            "bundle_name": self.bundle_name,
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
        """Parse and check the manifest's own rules (`check_entries`); a manifest breaking them is refused."""
        data = json.loads(text)
        known = {"version", "bundle_name", "model_id", "created", "architecture", "source", "prompt_format", "quantization",
                 "files", "fidelity", "vision", "llm", "tools"}
        files = [BundleFile(**f) for f in data["files"]]
        manifest = cls(
            version=int(data["version"]), bundle_name=data["bundle_name"] if "bundle_name" in data else data["model_id"],
            created=data.get("created", ""),
            architecture=data["architecture"], source=data["source"], prompt_format=data["prompt_format"],
            quantization=data["quantization"], files=files, fidelity=data.get("fidelity", {}),
            vision=data.get("vision", {}), llm=data.get("llm", {}), tools=data.get("tools", {}),
            extra={k: v for k, v in data.items() if k not in known},
        )
        check_entries(manifest.files)
        return manifest

    def file(self, role: str) -> BundleFile | None:
        return next((f for f in self.files if f.role == role), None)


def check_entry_path(path: str) -> None:
    """A manifest path names a file inside the bundle: relative, POSIX, no `..`, no empty part."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or ":" in parts[0]
            or any(part in ("", ".", "..") for part in parts)):
        raise ValueError(f"file path {path!r} is not a plain relative path inside the bundle")


def check_entries(files: list[BundleFile]) -> None:
    """The manifest's rules (docs/bundle.md): files listed, paths inside, each once, required roles present.

    Raises ValueError naming the first rule broken.
    """
    if not files:
        raise ValueError("it lists no files")
    seen_paths: set[str] = set()
    seen_roles: set[str] = set()
    for entry in files:
        if not isinstance(entry.path, str) or not isinstance(entry.role, str):
            raise ValueError("a file entry's path and role must be strings")
        check_entry_path(entry.path)
        if entry.path in seen_paths or entry.role in seen_roles:
            raise ValueError(f"{entry.path!r} ({entry.role}) is listed twice")
        if not isinstance(entry.size, int) or entry.size < 0:
            raise ValueError(f"{entry.path!r} has no valid size")
        if not (isinstance(entry.sha256, str) and len(entry.sha256) == 64
                and all(c in "0123456789abcdef" for c in entry.sha256)):
            raise ValueError(f"{entry.path!r} has no valid sha256")
        seen_paths.add(entry.path)
        seen_roles.add(entry.role)
    missing = [role for role in REQUIRED_ROLES if role not in seen_roles]
    if missing:
        raise ValueError(f"required file role(s) missing: {', '.join(missing)}")


def describe_files(root: Path, roles: dict[str, str]) -> list[BundleFile]:
    """BundleFile entries (size, sha256) for `roles` = {relative path: role}, hashed in parallel."""
    paths = list(roles)
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(paths)))) as pool:
        digests = list(pool.map(lambda p: sha256_file(root / p), paths))
    return [BundleFile(path=p, role=roles[p], size=(root / p).stat().st_size, sha256=d) for p, d in zip(paths, digests, strict=True)]


def apply_bundle_modes(root: Path) -> None:
    """Give every file and folder of a bundle being published the one bundle policy (0644/0755,
    docs/bundle.md), whatever the umask or the temp-file helpers (0600) left."""
    root = Path(root)
    os.chmod(root, BUNDLE_DIR_MODE)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, BUNDLE_DIR_MODE if path.is_dir() else BUNDLE_FILE_MODE)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (temp file + rename): a bundle is either complete or absent."""
    return write_atomic(Path(root) / MANIFEST_NAME, manifest.to_json())


@dataclass
class Bundle:
    """A verified bundle on disk."""

    root: Path
    manifest: Manifest
    manifest_sha256: str
    #: id of the trusted key whose signature the bundle carries; None where no key is trusted
    signed_by: str | None = None

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


def _gguf_string(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode("utf-8", "replace") if value.dtype.kind == "u" and value.dtype.itemsize == 1 else str(value[0])


def llm_metadata(path: Path) -> dict[str, str | None]:
    """What the LLM GGUF itself says it is (read from its header with `gguf`, no weights loaded)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError, struct errors... for a foreign or torn file
        raise HuatuoError(f"{path.name} is not a readable GGUF file ({exc.__class__.__name__})") from exc
    keys = ("general.architecture", "huatuo.architecture", "huatuo.quantization", "huatuo.prompt_format",
            "huatuo.source.architecture", "huatuo.source.config_sha256", MARKERS_KEY)
    return {key: _gguf_string(reader, key) for key in keys}


def check_metadata(root: Path, manifest: Manifest) -> list[str]:
    """Manifest fields the runtime reports (quantization, architecture, prompt format, source) that the
    LLM GGUF contradicts, one line each. The GGUF's bytes are covered by the manifest's sha256, so
    the file is the authority; a manifest edited by hand cannot relabel a model."""
    llm = manifest.file("llm")
    meta = llm_metadata(Path(root) / llm.path) if llm else {}
    if not meta:
        return []
    family = meta["general.architecture"]
    claims = [
        ("architecture", manifest.architecture, meta["huatuo.architecture"]),  # GGUFs before 0.1.x lack it
        ("quantization", manifest.quantization, meta["huatuo.quantization"]),
        ("prompt_format", manifest.prompt_format, meta["huatuo.prompt_format"]),
        ("source.hf_architecture", manifest.source.get("hf_architecture"), meta["huatuo.source.architecture"]),
        ("source.config_sha256", manifest.source.get("config_sha256"), meta["huatuo.source.config_sha256"]),
        ("llm.family", manifest.llm.get("family", family), family),
        ("llm.prompt_markers", manifest.llm.get("prompt_markers", meta[MARKERS_KEY]), meta[MARKERS_KEY]),
    ]
    problems = [f"manifest {name} {said!r} but the LLM file says {truth!r}"
                for name, said, truth in claims if truth is not None and said != truth]
    return problems


def _inside(root: Path, entry: BundleFile) -> bool:
    """The entry's file, symlinks followed, is below the bundle folder."""
    return (Path(root) / entry.path).resolve().is_relative_to(Path(root).resolve())


def verify_files(root: Path, manifest: Manifest, cache: VerifiedCache | None = None) -> list[str]:
    """Problems found (missing file, wrong size, wrong sha256, a path leading outside the bundle, a
    manifest field the LLM file contradicts), one line each naming the file or field."""

    def check(entry: BundleFile) -> str | None:
        path = Path(root) / entry.path
        if not _inside(root, entry):
            return f"{entry.path}: leads outside the bundle folder"
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
    if not problems:  # only a verified GGUF is an authority on what the model is
        problems = check_metadata(root, manifest)
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
    signed_by = None
    if verify:
        signed_by = verify_signature(root, digest)
        problems = verify_files(root, manifest, VerifiedCache() if use_cache else None)
        if problems:
            raise HuatuoError(
                f"model bundle {root.name} failed verification: " + "; ".join(problems),
                hint="re-copy the bundle from the conversion server; never edit bundle files",
            )
    return Bundle(root=root, manifest=manifest, manifest_sha256=digest, signed_by=signed_by)


def verify_signature(root: Path, manifest_sha256: str) -> str | None:
    """The trusted key that signed the manifest `read_manifest` hashed (None: no key trusted, nothing
    enforced); HuatuoError for a missing or bad signature (`huatuo_cli.bundles.signing`)."""
    from huatuo_cli.bundles.signing import check_signature

    raw = (Path(root) / MANIFEST_NAME).read_bytes()
    if hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise HuatuoError(f"bundle {Path(root).name}: manifest.json changed while it was being read")
    return check_signature(root, raw)
