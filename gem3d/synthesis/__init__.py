"""Planning and generating synthetic volumes, one job per module.

`plans` makes `SynthesisPlan`s (enhancement, counterfactual, de-enhancement, test regeneration); `models` loads
the networks; `preparation` checks masks, applies edits and fetches informed slices; `requests` encodes them
for the sampler; `records` writes lineage; `generate.synthesize` runs the batch loop.
"""

from gem3d.synthesis.generate import SyntheticVolume, synthesize, to_original_units
from gem3d.synthesis.models import LoadedModels, load_models, resolve_device
from gem3d.synthesis.plans import (
    ENHANCEMENT_SETTINGS,
    InformedChoice,
    Setting,
    SynthesisPlan,
    plan_counterfactual,
    plan_deenhancement,
    plan_enhancement,
    plan_test_regeneration,
)

__all__ = [
    "ENHANCEMENT_SETTINGS",
    "InformedChoice",
    "LoadedModels",
    "Setting",
    "SynthesisPlan",
    "SyntheticVolume",
    "load_models",
    "plan_counterfactual",
    "plan_deenhancement",
    "plan_enhancement",
    "plan_test_regeneration",
    "resolve_device",
    "synthesize",
    "to_original_units",
]
