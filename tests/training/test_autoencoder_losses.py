"""The first stage's latent-diffusion losses: a MONAI patch discriminator and least-squares adversarial term from
`adversarial_start` on, its state in checkpoints and exact resume, DDP, and the perceptual loss's offline error."""

from __future__ import annotations

import copy
import json
import os
import socket
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.losses import PatchAdversarialLoss
from torch.utils.data import default_collate

from gem3d.checkpoints import ModelSpec, build_model, load_model
from gem3d.config import Config
from gem3d.data import SliceDataset
from gem3d.models.autoencoder import PerceptualNetworkUnavailable, PixelCodec, autoencoder_loss, build_discriminator
from gem3d.training import train_stage
from gem3d.training.engine import PhaseRun, start_runtime
from gem3d.training.phases import STAGES, LossContext
from gem3d.training.state import weights_digest
from tests.training.conftest import tiny_config
from tests.training.test_resume import _assert_equal_tensors

TRAIN_CASES = ["case_a", "case_b", "case_c"]


def _config(steps: int = 6, train: dict | None = None, **autoencoder: object) -> Config:
    """A trained autoencoder on 16-pixel slices with a small two-layer discriminator (it takes 12 pixels and up)."""
    settings = {"kind": "train", "discriminator_layers": 2, "discriminator_channels": 8, **autoencoder}
    stage = {"steps": steps, "checkpoint_every": 3, "batch_windows": 2, **(train or {})}
    return tiny_config({"autoencoder": stage}, autoencoder=settings)


def _phase_run(config: Config) -> PhaseRun:
    """The autoencoder phase's training state, built as `train_stage` builds it (joins a process group if launched)."""
    runtime = start_runtime(config)
    torch.manual_seed(0)
    network = build_model(ModelSpec("autoencoder", num_classes=2), config)
    context = LossContext(config, STAGES["autoencoder"][0], 2, PixelCodec(), runtime.device)
    return PhaseRun(network, context, runtime)


def _batches(store: Path, count: int, first: int = 0) -> list[dict]:
    """`count` batches of two consecutive real slices of the training cases, from slice `first` on."""
    dataset = SliceDataset(store, TRAIN_CASES, seed=0)
    return [default_collate([dataset[first + 2 * k], dataset[first + 2 * k + 1]]) for k in range(count)]


def test_the_discriminator_trains_from_adversarial_start_and_not_before(small_store: Path) -> None:
    run = _phase_run(_config(adversarial_start=3))
    initial = copy.deepcopy(run.adversary.network.state_dict())
    for index, batch in enumerate(_batches(small_store, 5)):
        metrics = run.train_step(batch)
        current = run.adversary.network.state_dict()
        unchanged = all(torch.equal(tensor, initial[name]) for name, tensor in current.items())
        if index < 3:
            assert unchanged, f"the discriminator changed at step {index}, before adversarial_start"
            assert "discriminator_loss" not in metrics and "generator_adversarial_loss" not in metrics
        else:
            assert not unchanged, f"the discriminator did not train at step {index}"
            assert isinstance(metrics["discriminator_loss"], float) and metrics["discriminator_loss"] > 0
            assert isinstance(metrics["generator_adversarial_loss"], float)


def test_the_generator_loss_adds_the_weighted_adversarial_loss_of_its_reconstructions(small_store: Path) -> None:
    weight = 0.5
    config = _config(train={"grad_clip": 0.0}, adversarial_start=0, adversarial_weight=weight)
    run = _phase_run(config)
    autoencoder = copy.deepcopy(run.network.autoencoder)
    discriminator = copy.deepcopy(run.adversary.network)
    batch = _batches(small_store, 1, first=4)[0]
    torch.manual_seed(11)
    metrics = run.train_step(batch)

    torch.manual_seed(11)  # the same posterior sample
    reconstruction_kl, reconstruction = autoencoder_loss(autoencoder, batch["image"], config.autoencoder.kl_weight)
    logits = discriminator(reconstruction)[-1]  # (N, 1, h, w)
    adversarial = PatchAdversarialLoss(criterion="least_squares")(logits, target_is_real=True, for_discriminator=False)
    expected = reconstruction_kl + weight * adversarial
    assert metrics["generator_adversarial_loss"] == pytest.approx(adversarial.item(), rel=1e-6)
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-6)

    parameters = list(autoencoder.parameters())
    with_term = torch.autograd.grad(expected, parameters, retain_graph=True)
    without_term = torch.autograd.grad(reconstruction_kl, parameters)
    trained = [parameter.grad for parameter in run.network.autoencoder.parameters()]
    for got, wanted in zip(trained, with_term, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(got, plain, rtol=1e-3) for got, plain in zip(trained, without_term, strict=True))


def test_an_interrupted_adversarial_run_resumes_to_the_same_weights(tmp_path: Path, small_store: Path) -> None:
    eight = _config(8, train={"checkpoint_every": 4}, adversarial_start=2)
    four = _config(4, train={"checkpoint_every": 4}, adversarial_start=2)
    straight = train_stage("autoencoder", eight, small_store, tmp_path / "straight")
    first = train_stage("autoencoder", four, small_store, tmp_path / "split")
    assert first.losses == straight.losses[:4]
    resumed = train_stage("autoencoder", eight, small_store, tmp_path / "split", resume=True)
    assert len(resumed.losses) == 8 and resumed.losses == straight.losses
    expected = torch.load(straight.checkpoint, weights_only=True)
    actual = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("network", "ema", "optimizer", "lr_schedule", "discriminator"):
        _assert_equal_tensors(actual[key], expected[key], key)
    assert resumed.sha256 == straight.sha256  # the EMA bundle, byte for byte


def test_a_checkpoint_holds_the_discriminator_and_the_bundle_only_the_autoencoders_ema(
    tmp_path: Path, small_store: Path
) -> None:
    result = train_stage("autoencoder", _config(3, adversarial_start=1), small_store, tmp_path)
    state = torch.load(result.checkpoint, weights_only=True)
    saved = state["discriminator"]
    fresh = build_discriminator(channels=8, layers=2)
    assert saved["network"].keys() == fresh.state_dict().keys()
    optimiser_steps = [int(entry["step"]) for entry in saved["optimizer"]["state"].values()]
    assert optimiser_steps == [2] * len(list(fresh.parameters()))  # trained at phase steps 1 and 2

    bundle = load_model(tmp_path / "autoencoder")[0].state_dict()
    assert all(name.startswith("autoencoder.") or name == "latent_scale" for name in bundle)
    ema = state["ema"]["weights"]
    assert bundle.keys() == ema.keys()
    assert all(torch.equal(bundle[name], ema[name]) for name in bundle if name != "latent_scale")


def test_slices_too_small_for_the_discriminator_are_refused_only_when_it_would_train(
    tmp_path: Path, small_store: Path
) -> None:
    with pytest.raises(ValueError, match="at least 24 pixels"):
        train_stage("autoencoder", _config(3, adversarial_start=2, discriminator_layers=3), small_store, tmp_path)
    result = train_stage("autoencoder", _config(3, adversarial_start=3, discriminator_layers=3), small_store, tmp_path)
    assert result.steps == 3


def test_an_unobtainable_perceptual_network_is_named_with_the_ways_on(
    tmp_path: Path, small_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir().startswith(str(tmp_path))  # an empty cache

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"no network in this test ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)  # stands in for the missing network
    config = _config(3, perceptual_weight=0.1, perceptual_network="squeeze")
    with pytest.raises(PerceptualNetworkUnavailable) as raised:
        train_stage("autoencoder", config, small_store, tmp_path / "models")
    message = str(raised.value)
    assert "'squeeze'" in message and "perceptual_weight to 0" in message and torch.hub.get_dir() in message


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_rank(rank: int, world_size: int, port: int, config: Config, store: Path, out_dir: Path) -> None:
    """Three steps on this rank's own slices (adversarial from the second); writes the weights' digests."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    run = _phase_run(config)
    for step, batch in enumerate(_batches(store, 3, first=6 * rank)):
        torch.manual_seed(100 * rank + step)
        run.train_step(batch)
    digests = {"autoencoder": weights_digest(run.network), "discriminator": weights_digest(run.adversary.network)}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(digests))
    dist.destroy_process_group()


def test_two_gloo_processes_keep_one_discriminator(tmp_path: Path, small_store: Path) -> None:
    config = _config(3, adversarial_start=1)
    mp.spawn(_ddp_rank, args=(2, _free_port(), config, small_store, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["discriminator"] == ranks[1]["discriminator"]
    assert ranks[0]["autoencoder"] == ranks[1]["autoencoder"]
