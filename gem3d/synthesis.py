"""Planning and generating synthetic volumes: enhancement (ic, ic+ma, ig, ig+ma), counterfactuals,
de-enhancement and test-split regeneration, each a `SynthesisPlan` whose id is derived from all its inputs.

Planning reads only masks and shapes, so plans are cheap, deterministic and reviewable; `synthesize` turns a
list of plans into volumes with complete lineage records, sampling all their windows in shared batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from gem3d.checkpoints import MODEL_FILE, SPEC_FILE, load_model
from gem3d.config import Config
from gem3d.determinism import deterministic_kernels
from gem3d.editing import (
    AppliedEdit,
    Edit,
    PasteLesion,
    ShiftLabels,
    apply_edits,
    apply_geometry,
    default_augmentation,
    parse_edit,
    validate_mask,
)
from gem3d.errors import InvalidEditError, MissingFileError, StoreError
from gem3d.lineage import CheckpointRef, LineageRecord, SourceFile, code_version, derive_id, sha256_array, sha256_file
from gem3d.models.autoencoder import LatentCodec, PixelCodec
from gem3d.models.conditioning import GEM3DDenoiser, SliceGenerator, mask_to_condition
from gem3d.models.factory import build_codec
from gem3d.normalize import body_mask
from gem3d.preprocess import denormalise_intensity
from gem3d.sampling.informed import (
    InformedSlice,
    chosen_slice,
    fixed_slice,
    fixed_slice_index,
    generate_slices,
    parse_reference,
    pick_chosen,
    relative_slice,
)
from gem3d.sampling.propagation import Denoiser, SamplerSettings, VolumeRequest, sample_volumes
from gem3d.store import case_attributes, open_case_arrays, read_manifest

Setting = Literal["ic", "icma", "ig", "igma", "counterfactual", "deenhance", "test"]
ENHANCEMENT_SETTINGS = ("ic", "icma", "ig", "igma")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InformedChoice(_Frozen):
    """Which informed slice a plan uses: a real slice ("chosen", "fixed") or the slice generator's."""

    mode: Literal["chosen", "generated", "fixed"]
    case_id: str | None = None
    slice_index: int | None = None
    generator_sha256: str | None = None


class SynthesisPlan(_Frozen):
    """One synthetic volume to generate; `synthetic_id` is derived from every other field."""

    synthetic_id: str
    source_case_id: str
    source_mask_sha256: str
    setting: Setting
    variant: int
    seed: int
    start_slice: int
    edits: tuple[Edit, ...] = ()
    informed: InformedChoice
    checkpoint_sha256: str
    config_hash: str

    @classmethod
    def create(cls, **inputs) -> SynthesisPlan:
        """A plan from its inputs, with the id `derive_id("syn", ...)` of all of them."""
        draft = cls(synthetic_id="pending", **inputs)
        return draft.model_copy(
            update={"synthetic_id": derive_id("syn", **draft.model_dump(mode="json", exclude={"synthetic_id"}))}
        )


def plan_seed(*parts: object) -> int:
    """A stable 31-bit seed from its parts (the same in every process)."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(plan_seed(seed, purpose))


def _source_mask(store: str | Path, case_id: str) -> tuple[int, str]:
    """(slices, sha256 of the stored label array) of a case."""
    _, label = open_case_arrays(store, case_id)
    return label.shape[0], sha256_array(label[:])


def _start_slice(seed: int, num_slices: int, config: Config) -> int:
    """A random start slice from the plan's seed; 0 when sampling only upwards (the ablation)."""
    if config.sampling.directions == "up":
        return 0
    return int(_rng(seed, "start_slice").integers(num_slices))


def _training_pool(store: str | Path) -> list[str]:
    manifest = read_manifest(store)
    return sorted(manifest.loc[manifest["split"] == "train", "case_id"])


def plan_enhancement(
    store: str | Path,
    case_ids: Sequence[str],
    setting: Literal["ic", "icma", "ig", "igma"],
    per_case: int,
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    generator_sha256: str | None = None,
    pool: Sequence[str] | None = None,
) -> list[SynthesisPlan]:
    """`per_case` enhancement plans per case: random start slice; "ma" adds the configured mask augmentation;
    "ic" draws the informed case from `pool` (default: the training split), "ig" uses the slice generator."""
    if setting not in ENHANCEMENT_SETTINGS:
        raise ValueError(f"unknown enhancement setting {setting!r}; expected one of {ENHANCEMENT_SETTINGS}")
    if setting.startswith("ig") and not generator_sha256:
        raise ValueError(f"setting {setting!r} needs the slice generator's sha256 (generator_sha256)")
    pool = sorted(pool) if pool is not None else (_training_pool(store) if setting.startswith("ic") else [])
    edits = tuple(default_augmentation(config.edits)) if setting.endswith("ma") else ()
    plans = []
    for case_id in case_ids:
        num_slices, mask_sha256 = _source_mask(store, case_id)
        for variant in range(per_case):
            seed = plan_seed(base_seed, setting, case_id, variant)
            start = _start_slice(seed, num_slices, config)
            if setting.startswith("ic"):
                informed_case, index = pick_chosen(store, pool, case_id, start, num_slices, plan_seed(seed, "pool"))
                informed = InformedChoice(mode="chosen", case_id=informed_case, slice_index=index)
            else:
                informed = InformedChoice(mode="generated", generator_sha256=generator_sha256)
            plans.append(
                SynthesisPlan.create(
                    source_case_id=case_id,
                    source_mask_sha256=mask_sha256,
                    setting=setting,
                    variant=variant,
                    seed=seed,
                    start_slice=start,
                    edits=edits,
                    informed=informed,
                    checkpoint_sha256=checkpoint_sha256,
                    config_hash=config_hash,
                )
            )
    return plans


def _mapped_start(reference_slice: int, reference_slices: int, num_slices: int, config: Config) -> int:
    """The target slice at the reference slice's relative position (0 when sampling only upwards)."""
    if config.sampling.directions == "up":
        return 0
    return min(round(reference_slice / reference_slices * num_slices), num_slices - 1)


def plan_counterfactual(
    store: str | Path,
    mask_from: str,
    slice_from: str | None,
    edits: Sequence[Edit | str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    variants: int = 1,
) -> list[SynthesisPlan]:
    """Counterfactuals: the (edited) mask of `mask_from` with the informed slice of `slice_from`.

    `slice_from` "CASE:SLICE" fixes the slice (the start slice is its relative position); "CASE" takes that
    case's slice at the relative position of a random start slice; None takes `mask_from`'s own slice.
    Edits are `Edit` models or their CLI text ("remove:1,2,3", ...).
    """
    declared = tuple(parse_edit(edit) if isinstance(edit, str) else edit for edit in edits)
    reference_case, reference_slice = parse_reference(slice_from) if slice_from else (mask_from, None)
    num_slices, mask_sha256 = _source_mask(store, mask_from)
    reference_slices = open_case_arrays(store, reference_case)[0].shape[0]
    plans = []
    for variant in range(variants):
        seed = plan_seed(base_seed, "counterfactual", mask_from, slice_from, variant)
        if reference_slice is None:
            start = _start_slice(seed, num_slices, config)
            index = relative_slice(start, num_slices, reference_slices)
            informed = InformedChoice(mode="chosen", case_id=reference_case, slice_index=index)
        else:
            start = _mapped_start(reference_slice, reference_slices, num_slices, config)
            informed = InformedChoice(mode="fixed", case_id=reference_case, slice_index=reference_slice)
        plans.append(
            SynthesisPlan.create(
                source_case_id=mask_from,
                source_mask_sha256=mask_sha256,
                setting="counterfactual",
                variant=variant,
                seed=seed,
                start_slice=start,
                edits=declared,
                informed=informed,
                checkpoint_sha256=checkpoint_sha256,
                config_hash=config_hash,
            )
        )
    return plans


def plan_deenhancement(
    store: str | Path,
    case_ids: Sequence[str],
    reference: str | Sequence[str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
) -> list[SynthesisPlan]:
    """De-enhancement: every case regenerated from its own mask with one of the fixed reference slices
    ("CASE:SLICE" or "CASE", the latter meaning its slice with the most foreground), drawn per case."""
    texts = [reference] if isinstance(reference, str) else list(reference)
    if not texts:
        raise ValueError("de-enhancement needs at least one reference slice")
    references = []
    for text in texts:
        case_id, index = parse_reference(text)
        index = fixed_slice_index(store, case_id) if index is None else index
        references.append((case_id, index, open_case_arrays(store, case_id)[0].shape[0]))
    plans = []
    for case_id in case_ids:
        num_slices, mask_sha256 = _source_mask(store, case_id)
        seed = plan_seed(base_seed, "deenhance", case_id)
        reference_case, reference_slice, reference_slices = references[
            int(_rng(seed, "reference").integers(len(references)))
        ]
        plans.append(
            SynthesisPlan.create(
                source_case_id=case_id,
                source_mask_sha256=mask_sha256,
                setting="deenhance",
                variant=0,
                seed=seed,
                start_slice=_mapped_start(reference_slice, reference_slices, num_slices, config),
                informed=InformedChoice(mode="fixed", case_id=reference_case, slice_index=reference_slice),
                checkpoint_sha256=checkpoint_sha256,
                config_hash=config_hash,
            )
        )
    return plans


def plan_test_regeneration(
    store: str | Path,
    case_ids: Sequence[str],
    config: Config,
    checkpoint_sha256: str,
    config_hash: str,
    base_seed: int = 0,
    variants: int = 1,
) -> list[SynthesisPlan]:
    """Fidelity plans: each (test) case from its own mask and its own slice at a random start slice."""
    plans = []
    for case_id in case_ids:
        num_slices, mask_sha256 = _source_mask(store, case_id)
        for variant in range(variants):
            seed = plan_seed(base_seed, "test", case_id, variant)
            start = _start_slice(seed, num_slices, config)
            plans.append(
                SynthesisPlan.create(
                    source_case_id=case_id,
                    source_mask_sha256=mask_sha256,
                    setting="test",
                    variant=variant,
                    seed=seed,
                    start_slice=start,
                    informed=InformedChoice(mode="chosen", case_id=case_id, slice_index=start),
                    checkpoint_sha256=checkpoint_sha256,
                    config_hash=config_hash,
                )
            )
    return plans


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


@dataclass
class SyntheticVolume:
    """A generated volume in `[-1, 1]`, the mask it was generated from, and its lineage record."""

    plan: SynthesisPlan
    image: np.ndarray  # (Z, H, W) float32
    mask: np.ndarray  # (Z, H, W) uint8
    lineage: LineageRecord


@dataclass
class _Prepared:
    """A plan with its (edited) mask, edit records, informed slice and the real files it read."""

    plan: SynthesisPlan
    mask: np.ndarray  # (Z, H, W) uint8
    applied: list[AppliedEdit]
    informed: InformedSlice | None
    source_files: list[SourceFile]


def to_original_units(image: np.ndarray, normalisation: dict) -> np.ndarray:
    """A `[-1, 1]` volume back in the units of the case whose normalisation is given (e.g. its source case)."""
    return denormalise_intensity(image, normalisation)


def _case_files(store: str | Path, case_id: str, roles: dict[str, str]) -> list[SourceFile]:
    """The case's raw files (from the store attributes) as lineage sources; `roles` maps file kind -> role."""
    attributes = case_attributes(store, case_id)
    return [
        SourceFile(path=attributes["source_files"][kind], sha256=attributes["source_sha256"][kind], role=role)
        for kind, role in roles.items()
    ]


def _edited_mask(
    plan: SynthesisPlan, store: str | Path, label: np.ndarray, num_classes: int
) -> tuple[np.ndarray, list[AppliedEdit], list[SourceFile]]:
    """Apply the plan's edits with its seed and check the result; raises `InvalidEditError` naming the plan."""
    if not plan.edits:
        return label, [], []
    pasted = sorted({edit.source_case_id for edit in plan.edits if isinstance(edit, PasteLesion)})
    lesion_sources = {case_id: open_case_arrays(store, case_id)[1][:] for case_id in pasted}
    lesion_files = [source for case_id in pasted for source in _case_files(store, case_id, {"label": "lesion_source"})]
    lesion_labels = sorted(
        {value for edit in plan.edits if isinstance(edit, ShiftLabels | PasteLesion) for value in edit.labels}
    )
    body = body_mask(open_case_arrays(store, plan.source_case_id)[0][:])
    try:
        mask, applied = apply_edits(label, list(plan.edits), plan.seed, body_mask=body, lesion_sources=lesion_sources)
        validate_mask(
            mask,
            set(range(1, num_classes + 1)),
            body_mask=apply_geometry(body.astype(np.uint8), applied),
            lesion_labels=tuple(lesion_labels),
            case_id=plan.synthetic_id,
        )
    except InvalidEditError as error:
        raise InvalidEditError(
            plan.synthetic_id,
            f"plan {plan.synthetic_id} ({plan.setting}, mask of case {plan.source_case_id}): {error.reason}",
        ) from error
    return mask.astype(np.uint8), applied, lesion_files


def _check_models(plan: SynthesisPlan, models: LoadedModels) -> None:
    """Refuse a plan made for other checkpoints than the loaded ones (its id would not describe the volume)."""
    if plan.checkpoint_sha256 != models.denoiser_ref.sha256:
        raise ValueError(
            f"plan {plan.synthetic_id} was made for checkpoint {plan.checkpoint_sha256[:12]}, "
            f"loaded denoiser is {models.denoiser_ref.sha256[:12]}"
        )
    if models.uses_informed_slice and plan.informed.mode == "generated":
        if models.generator_ref is None:
            raise MissingFileError(None, f"plan {plan.synthetic_id} needs the slicegen bundle, none was loaded")
        if plan.informed.generator_sha256 != models.generator_ref.sha256:
            raise ValueError(f"plan {plan.synthetic_id} was made for another slice generator")


def _prepare(plan: SynthesisPlan, store: str | Path, models: LoadedModels) -> _Prepared:
    label = open_case_arrays(store, plan.source_case_id)[1][:]
    if sha256_array(label) != plan.source_mask_sha256:
        raise StoreError(plan.source_case_id, f"mask changed since plan {plan.synthetic_id} was made")
    mask, applied, lesion_files = _edited_mask(plan, store, label, models.num_classes)
    informed = None
    if models.uses_informed_slice and plan.informed.mode == "chosen":
        informed = chosen_slice(store, plan.informed.case_id, plan.informed.slice_index)
    elif models.uses_informed_slice and plan.informed.mode == "fixed":
        informed = fixed_slice(store, plan.informed.case_id, plan.informed.slice_index)
    sources = _case_files(store, plan.source_case_id, {"image": "image", "label": "label"})
    return _Prepared(plan, mask, applied, informed, sources + lesion_files)


def _generate_informed(prepared: list[_Prepared], models: LoadedModels, config: Config) -> None:
    """Fill in the generated informed slices of the plans that need one, in one batch."""
    pending = [item for item in prepared if models.uses_informed_slice and item.plan.informed.mode == "generated"]
    if not pending:
        return
    slices = generate_slices(
        models.slice_generator,
        models.codec,
        positions=[item.plan.start_slice / item.mask.shape[0] for item in pending],
        seeds=[item.plan.seed for item in pending],
        size=pending[0].mask.shape[-1],
        diffusion_config=config.diffusion,
        sampling_config=config.sampling,
        generator_sha256=models.generator_ref.sha256,
        slice_indices=[item.plan.start_slice for item in pending],
        decode_chunk=config.sampling.decode_chunk,
    )
    for item, informed in zip(pending, slices, strict=True):
        item.informed = informed


def _window_denoiser(denoiser: GEM3DDenoiser) -> Denoiser:
    """The denoiser as `sample_volumes` calls it; the baseline drops the (placeholder) informed slice."""
    if denoiser.use_informed_slice:
        return denoiser

    def without_informed_slice(noisy, timesteps, mask_condition, informed_slice):
        return denoiser(noisy, timesteps, mask_condition, None)

    return without_informed_slice


def _request(item: _Prepared, models: LoadedModels, config: Config) -> VolumeRequest:
    codec, device = models.codec, models.device
    size = item.mask.shape[-1] // codec.downsampling
    # (Z, H, W) -> (1, Z, Cm, h, w) -> (Z, Cm, h, w)
    mask_condition = mask_to_condition(
        torch.from_numpy(item.mask[None]).to(device),
        models.num_classes,
        config.autoencoder.mask_conditioning,
        size,
        codec,
    )[0]
    if item.informed is None:
        informed = torch.zeros((models.denoiser.sample_channels, size, size), device=device)
    else:
        # (1, H, W) -> (1, 1, H, W) -> (C, h, w)
        informed = codec.encode(torch.from_numpy(item.informed.image[None]).to(device))[0]
    return VolumeRequest(mask_condition.float(), informed.float(), item.plan.start_slice, item.plan.seed)


def _lineage(item: _Prepared, models: LoadedModels, settings: SamplerSettings, config: Config) -> LineageRecord:
    plan = item.plan
    checkpoints = [models.denoiser_ref, *([models.codec_ref] if models.codec_ref else [])]
    if item.informed is not None and item.informed.provenance["mode"] == "generated":
        checkpoints.append(models.generator_ref)
    version = code_version()
    return LineageRecord(
        synthetic_id=plan.synthetic_id,
        source_case_id=plan.source_case_id,
        source_mask_sha256=plan.source_mask_sha256,
        source_files=[*item.source_files, *(item.informed.source_files if item.informed else ())],
        mask_edits=[record.to_dict() for record in item.applied],
        informed_slice=item.informed.reference() if item.informed else None,
        start_slice=plan.start_slice,
        sampler={
            **asdict(settings),
            "window_length": config.data.window_length,
            "device": str(models.device),
            "deterministic_kernels": config.runtime.deterministic,
        },
        checkpoints=checkpoints,
        config_hash=plan.config_hash,
        package_version=version["package_version"],
        git_commit=version["git_commit"],
        git_dirty=version["dirty"],
        seed=plan.seed,
    )


def _prepare_all(
    plans: Sequence[SynthesisPlan],
    store: str | Path,
    models: LoadedModels,
    on_invalid: Callable[[SynthesisPlan, InvalidEditError], None] | None,
) -> list[_Prepared]:
    prepared = []
    for plan in plans:
        try:
            prepared.append(_prepare(plan, store, models))
        except InvalidEditError as error:
            if on_invalid is None:
                raise
            on_invalid(plan, error)
    return prepared


@torch.inference_mode()
def synthesize(
    plans: Sequence[SynthesisPlan],
    store: str | Path,
    models: LoadedModels,
    config: Config,
    on_invalid: Callable[[SynthesisPlan, InvalidEditError], None] | None = None,
    batch_chains: bool = True,
) -> list[SyntheticVolume]:
    """Generate the planned volumes, `config.sampling.volumes_per_batch` at a time in shared batches.

    Every plan is first checked against the loaded checkpoints. An invalid edited mask raises
    `InvalidEditError` naming the plan, or, with `on_invalid`, is reported there and skipped (the caller
    quarantines it). Volumes do not depend on which plans share their batch. Lineage records leave
    `flow_run_id` to the caller.
    """
    for plan in plans:
        _check_models(plan, models)
    with deterministic_kernels(config.runtime.deterministic):
        settings = SamplerSettings.from_config(config.sampling)
        denoiser = _window_denoiser(models.denoiser)
        step = config.sampling.volumes_per_batch
        volumes = []
        for first in range(0, len(plans), step):
            batch = _prepare_all(plans[first : first + step], store, models, on_invalid)
            _generate_informed(batch, models, config)
            requests = [_request(item, models, config) for item in batch]
            samples = sample_volumes(
                denoiser, config.diffusion, settings, requests, config.data.window_length, batch_chains=batch_chains
            )
            for item, sample in zip(batch, samples, strict=True):
                # (Z, C, h, w) -> (Z, 1, H, W) -> (Z, H, W)
                decoded = models.codec.decode(sample, chunk=config.sampling.decode_chunk).clamp(-1, 1)
                image = decoded[:, 0].float().cpu().numpy()
                volumes.append(SyntheticVolume(item.plan, image, item.mask, _lineage(item, models, settings, config)))
        return volumes
