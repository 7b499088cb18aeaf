"""The whole pipeline: one parent flow, nested MLflow runs, skip on unchanged inputs, bit-for-bit reruns."""

import json
import re
from pathlib import Path

import mlflow
import yaml

import gem3d
from flows.pipeline import pipeline_flow
from gem3d.anatomy import without_outline
from gem3d.checkpoints import read_bundle_meta
from gem3d.config import config_hash, load_config
from gem3d.lineage import read_lineage_table
from gem3d.store import store_attributes
from gem3d.synthetic_store import LINEAGE, volume_digests
from tests.flows.conftest import MICRO_CONFIG


def test_first_run_trains_samples_and_reports(micro_run):
    workdir, summary = micro_run
    assert summary["cases"] == 6 and summary["quarantined"] == 0
    assert all(text.startswith("trained") for text in summary["training"].values())
    ablation = {"stage1-no-outline", "stage2-no-outline"}  # evaluation.outline_ablation in the micro config
    assert set(summary["training"]) == {"stage1", "stage2", "slicegen", "baseline"} | ablation
    assert all(re.match(r"[1-9]\d* new", text) for text in summary["sampling"].values())
    report = (workdir / "report" / "report.html").read_text()
    for heading in ("Fidelity", "Volumetric consistency", "Segmentation usefulness", "Lineage"):
        assert heading in report
    # the ablation: its own bundles without the outline channel, its row in the fidelity table, and its figure
    with_outline = read_bundle_meta(workdir / "models" / "stage2")["config"]["denoiser"]["anatomy_outline"]
    without = read_bundle_meta(workdir / "models" / "no-outline" / "stage2")["config"]["denoiser"]["anatomy_outline"]
    assert (with_outline, without) == (True, False)
    assert "no-outline GEM-3D" in report and "outline ablation" in report
    assert "http://" not in report and "https://" not in report


def test_every_artefact_names_config_hash_code_version_and_seed(micro_run):
    workdir, summary = micro_run
    expected = {"config_hash": summary["config_hash"], "seed": 0, "package_version": gem3d.__version__}
    named = [
        store_attributes(workdir / "store.zarr")["provenance"],
        json.loads((workdir / "report" / "evaluation.json").read_text())["provenance"],
        *(read_bundle_meta(meta.parent)["provenance"] for meta in sorted((workdir / "models").glob("*/model.json"))),
    ]
    assert len(named) == 6
    for origin in named:
        assert expected.items() <= origin.items()
        assert origin["git_commit"]
    # the outline ablation's bundles were made with the config less the outline, and say so
    ablation_hash = config_hash(without_outline(load_config(MICRO_CONFIG)))
    assert ablation_hash != summary["config_hash"]
    for bundle in ("stage1", "stage2"):
        ablation = read_bundle_meta(workdir / "models" / "no-outline" / bundle)
        assert ablation["provenance"]["config_hash"] == ablation_hash
    for record in read_lineage_table(workdir / "synthetic.zarr" / LINEAGE):
        assert (record.config_hash, record.seed is not None, record.git_commit) == (
            summary["config_hash"],
            True,
            named[0]["git_commit"],
        )
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gem3d"])
    assert (runs["tags.gem3d.seed"] == "0").all()
    assert (runs["tags.mlflow.source.git.commit"] == named[0]["git_commit"]).all()
    assert (runs["tags.gem3d.package_version"] == gem3d.__version__).all()


def test_runs_are_nested_under_the_pipeline_run(micro_run):
    workdir, summary = micro_run
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gem3d"])
    children = runs[runs["tags.mlflow.parentRunId"] == summary["mlflow run"]]
    steps = set(children["tags.gem3d.step"])
    assert {"preprocess", "train-stage1", "train-stage2", "enhance-ic", "deenhance", "evaluate"} <= steps
    parent = runs[runs["run_id"] == summary["mlflow run"]].iloc[0]
    assert parent["tags.gem3d.config_hash"] == summary["config_hash"]


def test_second_run_with_nothing_changed_trains_and_samples_nothing(micro_run):
    workdir, first = micro_run
    before = volume_digests(workdir / "synthetic.zarr")
    again = pipeline_flow(None, MICRO_CONFIG, str(workdir), None, 2, 6)
    assert all(text.startswith("reused") for text in again["training"].values())
    assert all(text.startswith("0 new") for text in again["sampling"].values())
    assert again["evaluation"].startswith("reused")
    assert volume_digests(workdir / "synthetic.zarr") == before


def test_same_inputs_config_and_seed_give_bit_identical_volumes(micro_run, tmp_path):
    workdir, _ = micro_run
    other = pipeline_flow(None, MICRO_CONFIG, str(tmp_path / "work"), None, 2, 6)
    assert all(text.startswith("trained") for text in other["training"].values())
    assert volume_digests(tmp_path / "work" / "synthetic.zarr") == volume_digests(workdir / "synthetic.zarr")


def test_changing_one_sampling_parameter_reruns_sampling_but_not_training(micro_run, tmp_path):
    workdir, _ = micro_run
    config = yaml.safe_load(Path(MICRO_CONFIG).read_text())
    config["sampling"]["settings"] = ["ic"]
    config["sampling"]["steps"] = 3
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    summary = pipeline_flow(None, str(changed), str(workdir), None, 2, 6)
    assert all(text.startswith("reused") for text in summary["training"].values())
    assert re.match(r"[1-9]\d* new, 0 unchanged", summary["sampling"]["ic"])
