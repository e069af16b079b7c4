"""Read a HuatuoGPT-Vision (LLaVA-1.5) checkpoint folder without loading it whole.

Every converter and the PyTorch reference go through `LlavaCheckpoint`: it knows the config keys
(both transformers 4.x and 5.x styles), which tensors belong to the language model, the projector
and the vision tower, where the tower lives (inside the main safetensors or in a CLIP folder named
by `mm_vision_tower`), and it opens tensors one at a time so that peak memory is one tensor.
transformers' own `LlavaForConditionalGeneration` layout (the -hf repositories) is presented in the
original layout's config keys and tensor names (`huatuo_convert.llava_hf`); `layout` says which it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from huatuo_cli.errors import HuatuoError
from huatuo_cli.extras import require
from huatuo_convert.families import family_for_architecture
from huatuo_convert.families.base import ModelFamily

EMBEDDED_TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."
#: first name parts of a CLIP vision tower's tensors stored without `vision_model.` (transformers 5)
BARE_TOWER_ROOTS = frozenset({"embeddings", "pre_layrnorm", "encoder", "post_layernorm"})
#: `layout` of a transformers Qwen2.5-VL checkpoint (`huatuo_convert.qwen_vl`) and its tower's tensors
QWEN_LAYOUT = "qwen-vl"
QWEN_VISUAL_PREFIX = "visual."
#: CLIP's attention head size; the embedded layout carries no vision config of its own.
CLIP_HEAD_DIM = 64


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (config, index, preprocessor) as a dict, or a HuatuoError naming it:
    a hand-edited or truncated config must not end the conversion in a traceback."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HuatuoError(f"{path.name} is missing in {path.parent}") from None
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HuatuoError(f"{path.name} in {path.parent} is not valid JSON ({exc})",
                          hint="fix the file or copy it again from the original checkpoint") from None
    if not isinstance(data, dict):
        raise HuatuoError(f"{path.name} in {path.parent} is not a JSON object",
                          hint="fix the file or copy it again from the original checkpoint")
    return data


class PickleRefused(HuatuoError):
    """Pickle weights without allow_pickle. The hint names no option: `convert gguf` and `convert all`
    add their `--allow-pickle`; mmproj, vision, finetune and synth have none."""


class TensorFiles:
    """Name -> file map over safetensors (or, when allowed, pickle) shards, opened lazily."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self._handles: dict[Path, Any] = {}

    @classmethod
    def from_folder(cls, folder: Path, *, allow_pickle: bool = False, what: str = "checkpoint") -> TensorFiles:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index)["weight_map"]
            files = {name: folder / fname for name, fname in weight_map.items()}
            missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
            if missing:
                raise HuatuoError(f"{what} index names shard(s) that are missing: {', '.join(missing)}")
            return cls(files)
        single = sorted(folder.glob("*.safetensors"))
        if single:
            safe_open = require("safetensors").safe_open
            files: dict[str, Path] = {}
            for path in single:
                with safe_open(str(path), framework="pt") as handle:
                    files.update({name: path for name in handle.keys()})
            return cls(files)
        pickles = sorted(folder.glob("pytorch_model*.bin")) + sorted(folder.glob("*.pt"))
        if pickles:
            if not allow_pickle:
                raise PickleRefused(
                    f"{what} in {folder} holds only pickle weights ({pickles[0].name}); pickle files can run "
                    "arbitrary code when loaded",
                    hint="convert them to safetensors first",
                )
            return PickleTensorFiles(pickles)
        raise HuatuoError(f"no weights found in {folder} (looked for *.safetensors and pytorch_model*.bin)")

    def names(self) -> list[str]:
        return list(self.files)

    def _handle(self, path: Path):
        if path not in self._handles:
            safe_open = require("safetensors").safe_open
            self._handles[path] = safe_open(str(path), framework="pt")
        return self._handles[path]

    def get(self, name: str):
        """The tensor `name` as a torch tensor in its stored dtype."""
        return self._handle(self.files[name]).get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self.files[name]).get_slice(name).get_shape())

    def get_rows(self, name: str, start: int, stop: int):
        """Rows [start, stop) of tensor `name` (first axis), read with plain file reads.

        Not through safetensors' memory map: pages touched through a map stay in the process's
        resident set, so streaming a 15 GB model that way shows 15 GB RSS. `pread` keeps the
        resident set to the rows asked for.
        """
        torch = require("torch")
        path = self.files[name]
        dtype, shape, begin = _safetensors_header(path)[name]
        row_elems = 1
        for d in shape[1:]:
            row_elems *= d
        itemsize = torch.tensor([], dtype=dtype).element_size()
        stop = min(stop, shape[0]) if shape else 1
        buf = bytearray((stop - start) * row_elems * itemsize)
        with open(path, "rb") as handle:
            handle.seek(begin + start * row_elems * itemsize)
            if handle.readinto(buf) != len(buf):
                raise HuatuoError(f"{path.name} is truncated (tensor {name})")
        if not buf:
            return torch.empty((0, *shape[1:]), dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape((stop - start, *shape[1:]) if shape else ())


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


@lru_cache(maxsize=64)
def _safetensors_header(path: Path) -> dict[str, tuple[Any, list[int], int]]:
    """name -> (torch dtype, shape, absolute byte offset of the data) from a safetensors header."""
    torch = require("torch")
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = (getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]]), list(info["shape"]), 8 + size + info["data_offsets"][0])
    return out


class PickleTensorFiles(TensorFiles):
    """Pickle `.bin` shards, loaded with `weights_only=True` and memory-mapped; only with --allow-pickle."""

    def __init__(self, paths: list[Path]) -> None:
        torch = require("torch")
        self._state: dict[str, Any] = {}
        files: dict[str, Path] = {}
        for path in paths:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            self._state.update(state)
            files.update({name: path for name in state})
        super().__init__(files)

    def get(self, name: str):
        return self._state[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def get_rows(self, name: str, start: int, stop: int):
        return self._state[name][start:stop]


def read_config(config_path: Path) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """(config in the original layout's keys, layout name, CLIP config stated by the layout or None).

    The original layout's config.json is returned as it is; transformers' `LlavaForConditionalGeneration`
    layout (the -hf repositories) is normalised to the same keys (`huatuo_convert.llava_hf`), so that
    model-card identification and every converter read one kind of config.
    """
    config = read_json(config_path)
    from huatuo_convert import qwen_vl
    from huatuo_convert.llava_hf import LAYOUT_HF, LAYOUT_ORIGINAL, is_hf_config, normalise_config

    if qwen_vl.is_qwen_vl_config(config):
        return qwen_vl.normalise_config(config, config_path), qwen_vl.LAYOUT, None
    if not is_hf_config(config):
        return config, LAYOUT_ORIGINAL, None
    view, vision = normalise_config(config, config_path)
    return view, LAYOUT_HF, vision


@dataclass
class VisionTower:
    """Where the CLIP tower's weights are and what shape it has."""

    tensors: TensorFiles
    prefix: str  # prepended to CLIPVisionModel state-dict names (`vision_model.…`)
    config: dict[str, Any]  # CLIPVisionConfig fields
    source: str  # "embedded" or "folder"
    #: the stored names lack `vision_model.` (transformers 5's CLIPVisionModel.save_pretrained)
    bare: bool = False

    def _stored(self, clip_name: str) -> str:
        return self.prefix + (clip_name.removeprefix("vision_model.") if self.bare else clip_name)

    def state_dict_names(self) -> list[str]:
        """CLIPVisionModel state-dict names (`vision_model.…`) present in the checkpoint, whatever the
        layout: `vision_model.*` (transformers 4, or a full CLIPModel whose `text_model.*` is ignored)
        or bare `embeddings.*`/`encoder.*` (transformers 5)."""
        names = self.tensors.names()
        if self.bare:
            return ["vision_model." + n for n in names if n.split(".")[0] in BARE_TOWER_ROOTS]
        return [n[len(self.prefix):] for n in names if n.startswith(self.prefix + "vision_model.")]

    def get(self, clip_name: str):
        return self.tensors.get(self._stored(clip_name))


@dataclass
class LlavaCheckpoint:
    """A HuatuoGPT-Vision checkpoint folder, read lazily."""

    root: Path
    config: dict[str, Any]
    tensors: TensorFiles
    allow_pickle: bool = False
    #: the file layout it came from: "llava" (the original), "llava-hf" (transformers' own, `llava_hf`)
    #: or "qwen-vl" (transformers' Qwen2.5-VL, `qwen_vl`)
    layout: str = "llava"
    #: CLIPVisionConfig fields the -hf layout states (the original embedded layout states none)
    hf_vision_config: dict[str, Any] | None = None
    _vision: VisionTower | None = field(default=None, repr=False)

    @classmethod
    def open(cls, root: Path | str, *, allow_pickle: bool = False) -> LlavaCheckpoint:
        root = Path(root)
        config_path = root / "config.json"
        if not config_path.is_file():
            raise HuatuoError(f"{root} is not a model folder: no config.json")
        config, layout, vision_config = read_config(config_path)
        archs = config.get("architectures") or ["(none)"]
        family_for_architecture(str(archs[0]))  # an unknown architecture: one line naming the supported ones
        tensors = TensorFiles.from_folder(root, allow_pickle=allow_pickle)
        if vision_config is not None:
            from huatuo_convert.llava_hf import rename_tensors

            tensors = rename_tensors(tensors, root)
        elif layout == QWEN_LAYOUT:
            from huatuo_convert import qwen_vl

            tensors = qwen_vl.rename_tensors(tensors, root)
        return cls(root=root, config=config, tensors=tensors, allow_pickle=allow_pickle, layout=layout,
                   hf_vision_config=vision_config)

    # -- identity ---------------------------------------------------------------------------
    @property
    def hf_architecture(self) -> str:
        return self.config["architectures"][0]

    @property
    def family(self) -> ModelFamily:
        """The model family that converts this checkpoint (`huatuo_convert.families`)."""
        return family_for_architecture(self.hf_architecture)

    @property
    def arch(self) -> str:
        """huatuo's id: the family's, or the language model's type for a checkpoint without vision
        (the LLM-only benchmark and tests)."""
        return self.family.name if self.has_vision else self.family.text_model_type

    @property
    def llm_family(self) -> str:
        """The language model's GGUF architecture (`general.architecture`)."""
        return self.family.llm.gguf_arch

    @cached_property
    def config_sha256(self) -> str:
        return hashlib.sha256((self.root / "config.json").read_bytes()).hexdigest()

    @property
    def has_vision(self) -> bool:
        return self.hf_architecture == self.family.hf_architecture

    # -- language model hyper-parameters -----------------------------------------------------
    @property
    def rope_theta(self) -> float:
        """transformers 4.x writes `rope_theta`; 5.x writes `rope_parameters.rope_theta`."""
        if "rope_theta" in self.config:
            return float(self.config["rope_theta"])
        params = self.config.get("rope_parameters") or {}
        if "rope_theta" in params:
            return float(params["rope_theta"])
        return 10000.0

    @property
    def num_kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.config["num_attention_heads"])

    @property
    def select_layer(self) -> int:
        return int(self.config.get("mm_vision_select_layer", -2))

    @property
    def select_feature(self) -> str:
        return str(self.config.get("mm_vision_select_feature", "patch"))

    # -- tensors -------------------------------------------------------------------------------
    def llm_tensor_names(self) -> list[str]:
        """Names of the language model's tensors (no projector, no tower)."""
        return [
            n for n in self.tensors.names()
            if not n.startswith((EMBEDDED_TOWER_PREFIX, PROJECTOR_PREFIX, QWEN_VISUAL_PREFIX))
        ]

    def projector_tensor_names(self) -> list[str]:
        return [n for n in self.tensors.names() if n.startswith(PROJECTOR_PREFIX)]

    def get(self, name: str):
        return self.tensors.get(name)

    # -- vision ---------------------------------------------------------------------------------
    @property
    def preprocessor_config(self) -> dict[str, Any]:
        for folder in (self.root, self._vision_folder()):
            if folder is not None and (folder / "preprocessor_config.json").is_file():
                return read_json(folder / "preprocessor_config.json")
        raise HuatuoError(f"no preprocessor_config.json in {self.root} or its vision tower folder")

    def _vision_folder(self) -> Path | None:
        name = self.config.get("mm_vision_tower") or self.config.get("vision_tower")
        if not name:
            return None
        path = Path(name)
        path = path if path.is_absolute() else self.root / path
        return path if path.is_dir() else None

    @property
    def vision(self) -> VisionTower:
        if self._vision is None:
            self._vision = self._find_vision_tower()
        return self._vision

    def _find_vision_tower(self) -> VisionTower:
        if not self.has_vision:
            raise HuatuoError(f"{self.hf_architecture} has no vision tower")
        folder = self._vision_folder()
        if folder is not None:
            cfg = read_json(folder / "config.json")
            vision_cfg = cfg.get("vision_config", cfg) if cfg.get("model_type") == "clip" else cfg
            tensors = TensorFiles.from_folder(folder, allow_pickle=self.allow_pickle, what="vision tower")
            names = tensors.names()
            bare = not any(n.startswith("vision_model.") for n in names) and any(
                n.split(".")[0] in BARE_TOWER_ROOTS for n in names)
            return VisionTower(tensors=tensors, prefix="", config=_clip_config(vision_cfg), source="folder", bare=bare)
        embedded = [n for n in self.tensors.names() if n.startswith(EMBEDDED_TOWER_PREFIX)]
        if embedded:
            return VisionTower(
                tensors=self.tensors,
                prefix=EMBEDDED_TOWER_PREFIX,
                config=_clip_config(self.hf_vision_config) if self.hf_vision_config else self._infer_clip_config(),
                source="embedded",
            )
        named = self.config.get("mm_vision_tower", "(mm_vision_tower not set)")
        raise HuatuoError(
            "vision tower not found: looked for a CLIP folder at "
            f"'{named}' (relative to {self.root}) and for tensors '{EMBEDDED_TOWER_PREFIX}vision_model.*' "
            "in the main checkpoint",
            hint="copy the CLIP folder the config names next to the model, or use a checkpoint with the tower embedded",
        )

    def _infer_clip_config(self) -> dict[str, Any]:
        """CLIP hyper-parameters from tensor shapes (the embedded layout stores no vision config)."""
        p = EMBEDDED_TOWER_PREFIX + "vision_model."
        names = self.tensors.names()
        patch = self.tensors.shape(p + "embeddings.patch_embedding.weight")
        n_pos = self.tensors.shape(p + "embeddings.position_embedding.weight")[0]
        fc1 = self.tensors.shape(p + "encoder.layers.0.mlp.fc1.weight")
        layers = len({n.split(".")[6] for n in names if n.startswith(p + "encoder.layers.")})
        hidden, patch_size = patch[0], patch[2]
        grid = round((n_pos - 1) ** 0.5)
        return _clip_config({
            "hidden_size": hidden,
            "intermediate_size": fc1[0],
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // CLIP_HEAD_DIM),
            "image_size": grid * patch_size,
            "patch_size": patch_size,
            "num_channels": patch[1],
        })


def _clip_config(raw: dict[str, Any]) -> dict[str, Any]:
    """CLIPVisionConfig fields with CLIP-L defaults for anything not stated."""
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
            "patch_size", "num_channels", "layer_norm_eps", "hidden_act", "projection_dim")
    defaults = {"num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu", "projection_dim": 768}
    return {k: raw.get(k, defaults.get(k)) for k in keys if raw.get(k, defaults.get(k)) is not None}

