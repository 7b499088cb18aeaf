"""Training of every GEM-3D stage with one loop (`train_stage`); stages differ by their phases (`STAGES`).

Modules: `phases` (what each stage trains and its losses), `engine` (device, DDP, optimiser, EMA, per-step
data indices), `state` (training-state checkpoints), `evaluation` (validation and sample grid), `loop`.
"""

from gem3d.training.engine import StepBatchSampler
from gem3d.training.loop import TrainResult, train_stage
from gem3d.training.phases import STAGES, Phase, TrainingStage
from gem3d.training.state import CheckpointDir

__all__ = ["STAGES", "CheckpointDir", "Phase", "TrainingStage", "StepBatchSampler", "TrainResult", "train_stage"]
