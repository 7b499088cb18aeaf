"""One configuration model for the whole pipeline, loaded from YAML, with a stable content hash.

Every artefact and lineage record carries `config_hash(config)`; steps that depend on only part of the
configuration use `section_hash(config, ...)` so that changing one parameter reruns only what needs it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Ingest and preprocessing: how raw volumes become `(Z, H, W)` arrays in `[-1, 1]`."""

    window_length: int = Field(16, ge=2, description="L: consecutive slices per training window")
    in_plane_size: int = Field(64, ge=8, description="target H = W after in-plane resize")
    target_spacing: tuple[float, float, float] | None = Field(
        None, description="optional (x, y, z) spacing in mm to resample to before resizing"
    )
    modality: Literal["auto", "MRI", "CT"] = "auto"
    channel: str | int | None = Field(None, description="channel name or index of multi-channel images")
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (-175.0, 275.0)
    crop_empty_slices: Literal["auto", "none", "image", "label"] = Field(
        "auto",
        description="crop empty end slices by image or label content; auto: label for CT, image for MRI",
    )
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must sum to 1, got {self.split_fractions}")
        low, high = self.mri_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"mri_percentiles must satisfy 0 <= low < high <= 100, got {self.mri_percentiles}")
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")
        return self


class AutoencoderConfig(_Section):
    """First stage: pixel space (no autoencoder), a KL autoencoder trained here, or one loaded from disk."""

    kind: Literal["none", "train", "pretrained"] = "none"
    pretrained_path: Path | None = None
    latent_channels: int = 4
    block_channels: tuple[int, ...] = (32, 64)
    scale_factor: float | None = Field(
        None,
        gt=0,
        description="latent scale; None: estimated from the training latents (train) or the folder's own (pretrained)",
    )
    kl_weight: float = 1e-6
    adversarial_weight: float = Field(
        0.01,
        ge=0,
        description="weight of the patch discriminator's least-squares adversarial term in the trained autoencoder's "
        "loss (MONAI's latent-diffusion recipe); 0: no discriminator, reconstruction + KL (+ perceptual) only",
    )
    adversarial_start: int = Field(
        50,
        ge=0,
        description="autoencoder training steps before the discriminator trains and the adversarial term is added",
    )
    discriminator_channels: int = Field(32, ge=1, description="channels of the patch discriminator's first layer")
    discriminator_layers: int = Field(
        3,
        ge=1,
        description="strided layers of the patch discriminator; slices need at least 3 * 2**layers pixels a side",
    )
    perceptual_weight: float = Field(
        0.0,
        ge=0,
        description="weight of MONAI's perceptual (LPIPS) loss; off by default because its network's pretrained "
        "weights are downloaded (or read from the torch hub cache)",
    )
    perceptual_network: Literal["squeeze", "alex", "vgg"] = Field(
        "squeeze", description="the pretrained network of the perceptual loss"
    )
    mask_conditioning: Literal["encoder", "onehot"] = "onehot"


class DenoiserConfig(_Section):
    """The 2D UNet and its pseudo-3D extension."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, True)
    head_channels: int = 32
    dropout: float = 0.0
    temporal_attention: bool = True
    anatomy_outline: bool = Field(
        True, description="condition on the body outline too (one more mask class); false: the paper's mask only"
    )


class DiffusionConfig(_Section):
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    min_snr_gamma: float | None = Field(
        None,
        gt=0,
        description="Min-SNR loss weighting (Hang et al. 2023): each sample's loss weighted as if its SNR were at "
        "most gamma (5 in the paper); None: the plain unweighted loss",
    )


class StageTrainConfig(_Section):
    steps: int = 100
    learning_rate: float = 1e-4
    batch_windows: int = 1
    warmup_steps: int = 10
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 50
    train_all_parameters: bool = False


class TrainConfig(_Section):
    autoencoder: StageTrainConfig = StageTrainConfig(steps=200, learning_rate=1e-3)
    stage1: StageTrainConfig = StageTrainConfig(steps=300, learning_rate=1e-3)
    stage2: StageTrainConfig = StageTrainConfig(steps=100, learning_rate=1e-3)
    slicegen: StageTrainConfig = StageTrainConfig(steps=200, learning_rate=1e-3)
    baseline: StageTrainConfig = StageTrainConfig(steps=200, learning_rate=1e-3)
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    num_workers: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SamplingConfig(_Section):
    """Bi-directional propagation sampling and enhancement settings."""

    sampler: Literal["ddim", "dpm_solver"] = "ddim"
    steps: int = 200
    eta: float = 1.0
    overlap: int = Field(1, ge=0)
    overlapped_inpainting: bool = True
    directions: Literal["both", "up"] = "both"
    start_slice: Literal["random", "labelled", "most_labels"] = Field(
        "random",
        description="random: any slice (the paper's); labelled: a slice holding foreground labels; most_labels: "
        "a slice holding the most distinct labels",
    )
    resample: int = Field(
        0, ge=0, description="RePaint-style extra passes per step for windows with known frames (DDIM only)"
    )
    match_label_means: bool = Field(
        False,
        description="after sampling, shift each label's mean intensity to its mean on a real informed slice "
        "(labels the slice shows): carries a case's contrast (e.g. CT phase) that a briefly trained model under-draws",
    )
    settings: tuple[Literal["ic", "icma", "ig", "igma"], ...] = ("ic", "icma", "ig", "igma")
    variants_per_case: int = 1
    volumes_per_batch: int = 4
    decode_chunk: int = 16

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        if self.resample and self.sampler != "ddim":
            raise ValueError(f"sampling.resample needs sampler 'ddim', got {self.sampler!r}")
        return self


class EditConfig(_Section):
    """Mask augmentation used by the `ma` settings: a small rotation always; flip and lesion shift per dataset.

    What may move or mirror depends on the anatomy, so it comes from an edit profile (`gem3d.editing.EDIT_PROFILES`):
    `profile` "auto" picks it from the store's recorded dataset name (brain tumours: labels 1, 2, 3 movable and a
    left-right flip; abdomen: rotation only; any other dataset: rotation only). `shift_labels` and
    `flip_probability`, when set, win over the profile.
    """

    profile: Literal["auto", "brain", "abdomen", "rotation_only"] = "auto"
    max_rotation_degrees: float = Field(2.5, ge=0, le=180)
    flip_probability: float | None = Field(None, ge=0, le=1, description="None: the profile's")
    shift_labels: tuple[int, ...] | None = Field(
        None, description="the movable lesion labels shifted towards the centre; None: the profile's, () none"
    )
    shift_voxels: tuple[int, int] = (20, 60)


class EvaluationConfig(_Section):
    """Budgets of the networks the evaluation trains itself (feature extractor, segmentation comparison)."""

    feature_steps: int = 300
    segmentation_steps: int = 300
    scarce_fraction: float = Field(0.25, gt=0, le=1)
    lineage_entries: int = 8
    outline_ablation: bool = Field(
        False, description="also train stages 1 and 2 without the anatomy outline and score them on the test cases"
    )


class SyntheticContractConfig(_Section):
    """Bounds of the synthetic data contract on what synthesis cannot hide by clipping to `[-1, 1]`."""

    unclamped_limit: float = Field(
        2.0, gt=1, description="values before the clip must lie in [-limit, limit]; beyond, the sampler diverged"
    )
    max_clamped_fraction: float = Field(
        0.01, ge=0, le=1, description="largest fraction of a volume's voxels outside [-1, 1] before the clip"
    )
    label_mean_margin: float = Field(
        0.25, ge=0, description="how far a label's mean intensity may lie outside the real training cases' range"
    )


class RuntimeConfig(_Section):
    """Where work runs; not part of any result, so excluded from hashes."""

    dask_address: str | None = None
    workers: int = 2
    deterministic: bool = False
    """Deterministic GPU kernels for training and sampling (`gem3d.determinism`): slower, but reruns on the same
    GPU and software give identical results. CPU runs are bit-for-bit reproducible either way."""


class Config(_Section):
    name: str = "default"
    seed: int = 0
    data: DataConfig = DataConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sampling: SamplingConfig = SamplingConfig()
    edits: EditConfig = EditConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    synthetic_contract: SyntheticContractConfig = SyntheticContractConfig()
    runtime: RuntimeConfig = RuntimeConfig()


_UNHASHED = {"name", "runtime"}


def load_config(path: str | Path | None = None) -> Config:
    """Load a YAML config file, or a preset by name ("tiny", "paper"); None gives the tiny preset."""
    if path is None:
        path = "tiny"
    candidate = Path(path)
    if not candidate.exists() and not candidate.suffix:
        candidate = PRESETS_DIR / f"{path}.yaml"
    if not candidate.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(candidate) as handle:
        raw = yaml.safe_load(handle) or {}
    return Config.model_validate(raw)


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(config: Config) -> str:
    """Stable 16-hex-digit hash of everything that affects results (not the name or runtime)."""
    return _digest(config.model_dump(mode="json", exclude=_UNHASHED))


def section_hash(config: Config, *sections: str) -> str:
    """Hash of the named top-level sections plus the seed: the cache key of a step that reads only those."""
    dumped = config.model_dump(mode="json")
    return _digest({"seed": config.seed, **{name: dumped[name] for name in sections}})
