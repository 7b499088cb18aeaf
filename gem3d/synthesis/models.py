"""Loading the networks sampling needs from model bundles, with the checkpoint references lineage records name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from gem3d.checkpoints import MODEL_FILE, SPEC_FILE, load_model
from gem3d.config import Config
from gem3d.errors import MissingFileError
from gem3d.lineage import CheckpointRef, sha256_file
from gem3d.models.autoencoder import LatentCodec, PixelCodec
from gem3d.models.conditioning import GEM3DDenoiser, SliceGenerator
from gem3d.models.factory import build_codec


@dataclass
class LoadedModels:
    """The networks sampling needs, in eval mode on one device, with the checkpoints they came from."""

    denoiser: GEM3DDenoiser
    codec: PixelCodec | LatentCodec
    num_classes: int
    denoiser_ref: CheckpointRef
    codec_ref: CheckpointRef | None = None
    slice_generator: SliceGenerator | None = None
    generator_ref: CheckpointRef | None = None
    device: torch.device = torch.device("cpu")

    @property
    def uses_informed_slice(self) -> bool:
        """False for the baseline denoiser, which is conditioned on the mask only."""
        return self.denoiser.use_informed_slice


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's device name; "auto" picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _bundle(directory: Path) -> tuple[torch.nn.Module, CheckpointRef, dict]:
    module, meta = load_model(directory)
    reference = CheckpointRef(
        role=meta["spec"]["role"],
        path=str((directory / MODEL_FILE).resolve()),
        sha256=meta["sha256"],
        mlflow_run_id=meta.get("mlflow_run_id"),
        model_version=meta.get("model_version"),
    )
    return module, reference, meta


def _pretrained_codec(config: Config) -> tuple[LatentCodec, CheckpointRef]:
    codec = build_codec(config)
    folder = Path(config.autoencoder.pretrained_path)
    weights = sorted(path for path in folder.iterdir() if path.suffix in (".safetensors", ".bin"))
    if not weights:
        raise MissingFileError(folder, "no .safetensors or .bin weights in the pretrained autoencoder folder")
    return codec, CheckpointRef(role="autoencoder", path=str(weights[0].resolve()), sha256=sha256_file(weights[0]))


def load_models(
    models_dir: str | Path,
    config: Config,
    role: Literal["stage2", "baseline"] = "stage2",
    device: str | torch.device | None = None,
) -> LoadedModels:
    """Load the denoiser bundle `<models_dir>/<role>`, the first stage, and the slice generator when present."""
    models_dir = Path(models_dir)
    device = resolve_device(config.train.device) if device is None else torch.device(device)
    denoiser, denoiser_ref, meta = _bundle(models_dir / role)
    codec_ref = None
    if config.autoencoder.kind == "train":
        codec, codec_ref, _ = _bundle(models_dir / "autoencoder")
    elif config.autoencoder.kind == "pretrained":
        codec, codec_ref = _pretrained_codec(config)
    else:
        codec = PixelCodec()
    generator, generator_ref = None, None
    if (models_dir / "slicegen" / SPEC_FILE).exists():
        generator, generator_ref, _ = _bundle(models_dir / "slicegen")
        generator = generator.to(device).eval()
    return LoadedModels(
        denoiser=denoiser.to(device).eval(),
        codec=codec.to(device).eval(),
        num_classes=int(meta["spec"]["num_classes"]),
        denoiser_ref=denoiser_ref,
        codec_ref=codec_ref,
        slice_generator=generator,
        generator_ref=generator_ref,
        device=device,
    )
