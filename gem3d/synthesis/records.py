"""The lineage record of a generated volume: sources, edits, informed slice, sampler, checkpoints, code."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gem3d.config import Config
from gem3d.lineage import LineageRecord, code_version
from gem3d.sampling.propagation import SamplerSettings
from gem3d.synthesis.models import LoadedModels
from gem3d.synthesis.preparation import PreparedPlan


def sampler_record(config: Config) -> dict[str, Any]:
    """The settings that decide how a volume is sampled from its plan, as its lineage record names them (the
    device and kernel choice aside): the sampler's, the window length and the label-mean matching."""
    return {
        **asdict(SamplerSettings.from_config(config.sampling)),
        "window_length": config.data.window_length,
        "match_label_means": config.sampling.match_label_means,
    }


def lineage_record(item: PreparedPlan, models: LoadedModels, config: Config) -> LineageRecord:
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
            **sampler_record(config),
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
