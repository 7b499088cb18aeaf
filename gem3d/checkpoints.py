"""Trained model bundles: weights as safetensors plus a JSON spec that rebuilds the exact network.

A bundle is a folder `<models>/<role>/` holding `model.safetensors` (the EMA weights) and `model.json`
(role, config, number of classes, informed-slice use, whether pseudo-3D layers are present, and the
weights' sha256). Loading re-hashes the weights and refuses a bundle whose file has changed.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from safetensors.torch import load_file, save_file
from torch import nn

from gem3d.config import Config, config_hash
from gem3d.errors import MissingFileError, StoreError
from gem3d.lineage import derive_id, provenance, sha256_file
from gem3d.models.factory import build_codec, build_denoiser, build_slice_generator

MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
Role = Literal["autoencoder", "stage1", "stage2", "slicegen", "baseline"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network before loading its weights."""

    role: Role
    num_classes: int
    use_informed_slice: bool = True
    volumetric: bool = False


def build_model(spec: ModelSpec, config: Config) -> nn.Module:
    """A freshly initialised network for `spec` (the same builder training used)."""
    if spec.role == "autoencoder":
        return build_codec(config)
    if spec.role == "slicegen":
        return build_slice_generator(config)
    model = build_denoiser(config, spec.num_classes, use_informed_slice=spec.use_informed_slice)
    if spec.volumetric:
        model.enable_volumetric_tuning(config.denoiser.temporal_attention)
    return model


def save_model(module: nn.Module, spec: ModelSpec, config: Config, directory: str | Path, extra: dict) -> str:
    """Write weights and spec atomically (temporary names, then rename); returns the weights' sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    handle, temporary = tempfile.mkstemp(prefix=f".{MODEL_FILE}.", dir=directory)
    os.close(handle)
    try:
        save_file(state, temporary)
        digest = sha256_file(temporary)
        os.replace(temporary, directory / MODEL_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    payload = {
        "spec": asdict(spec),
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "provenance": provenance(config),
        "sha256": digest,
        **extra,
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{SPEC_FILE}.", dir=directory)
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=2, sort_keys=True)
    os.replace(temporary, directory / SPEC_FILE)
    return digest


def read_bundle_meta(directory: str | Path) -> dict:
    """The bundle's `model.json` (spec, config, sha256, training summary)."""
    path = Path(directory) / SPEC_FILE
    if not path.exists():
        raise MissingFileError(path, "no trained model here; run `gem3d train` first")
    return json.loads(path.read_text())


def first_stage_sha256(config: Config, models_dir: str | Path) -> str | None:
    """What a latent stage's latent space is beyond the config: the weights sha256 of the trained autoencoder
    bundle `<models_dir>/autoencoder` (its estimated scale included), or a digest of the pretrained folder's
    weights and `config.json` (its `scaling_factor`); None in pixel space."""
    settings = config.autoencoder
    if settings.kind == "train":
        return read_bundle_meta(Path(models_dir) / "autoencoder")["sha256"]
    if settings.kind == "none":
        return None
    if settings.pretrained_path is None:
        raise MissingFileError(None, "autoencoder.kind is 'pretrained' but autoencoder.pretrained_path is not set")
    folder = Path(settings.pretrained_path)
    if not folder.is_dir():
        raise MissingFileError(folder, "the pretrained autoencoder folder does not exist")
    files = sorted(path for path in folder.iterdir() if path.suffix in (".safetensors", ".bin", ".json"))
    if not any(path.suffix != ".json" for path in files):
        raise MissingFileError(folder, "no .safetensors or .bin weights in the pretrained autoencoder folder")
    return derive_id("first-stage", **{path.name: sha256_file(path) for path in files})


def load_model(directory: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild and load a bundle in eval mode, after checking its weights still hash to the recorded sha256."""
    directory = Path(directory)
    meta = read_bundle_meta(directory)
    weights = directory / MODEL_FILE
    if not weights.exists():
        raise MissingFileError(weights, "model weights are missing")
    digest = sha256_file(weights)
    if digest != meta["sha256"]:
        raise StoreError(weights, f"weights changed since training: sha256 {digest} != recorded {meta['sha256']}")
    config = Config.model_validate(meta["config"])
    module = build_model(ModelSpec(**meta["spec"]), config)
    module.load_state_dict(load_file(weights))
    return module.eval(), meta
