"""The synthetic store: atomic publication, skipped reruns, lineage table, quarantine, contract rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import gem3d.synthetic_store as synthetic_store
from data_contracts import synthetic_contract
from gem3d.config import SyntheticContractConfig, config_hash
from gem3d.errors import StoreError
from gem3d.lineage import DIGESTS_ATTRIBUTE, attribute_digests, read_lineage_rows, read_lineage_table, sha256_array
from gem3d.store import read_manifest, staging_dir
from gem3d.synthesis import SyntheticVolume, load_models, plan_enhancement, synthesize
from gem3d.synthetic_store import (
    LINEAGE,
    list_synthetic,
    quarantine,
    read_lineage_digest,
    read_synthetic,
    rebuild_lineage_table,
    synthetic_attributes,
    synthetic_exists,
    synthetic_row,
    volume_digests,
    write_synthetic,
)
from tests.synthesis import CONFIG, build_models, build_store


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_store")
    store = build_store(root)
    models = load_models(build_models(root / "models"), CONFIG, device="cpu")
    cases = sorted(read_manifest(store)["case_id"])[:2]
    plans = plan_enhancement(store, cases, "icma", 1, CONFIG, models.denoiser_ref.sha256, config_hash(CONFIG))
    return synthesize(plans, store, models, CONFIG)


def test_volumes_are_published_with_mask_and_lineage_and_reruns_skip_them(tmp_path, volumes):
    target = tmp_path / "synthetic.zarr"
    assert list_synthetic(target) == []
    written = write_synthetic(target, volumes, flow_run_id="run-1")
    ids = [volume.plan.synthetic_id for volume in volumes]
    assert written == ids and list_synthetic(target) == sorted(ids)
    for volume in volumes:
        assert synthetic_exists(target, volume.plan.synthetic_id)
        image, label, record = read_synthetic(target, volume.plan.synthetic_id)
        np.testing.assert_array_equal(image, volume.image)
        np.testing.assert_array_equal(label, volume.mask)
        hashes = {"image_sha256": sha256_array(image), "mask_sha256": sha256_array(label)}
        assert record == volume.lineage.model_copy(update={"flow_run_id": "run-1", **hashes})
        attributes = synthetic_attributes(target, volume.plan.synthetic_id)
        assert attributes["source_case_id"] == volume.plan.source_case_id
        assert attributes["plan"]["synthetic_id"] == volume.plan.synthetic_id
        assert attributes[DIGESTS_ATTRIBUTE] == attribute_digests(attributes)
    table = rebuild_lineage_table(target)
    assert {record.synthetic_id for record in read_lineage_table(table)} == set(ids)
    assert read_lineage_digest(target) == read_lineage_digest(target) | {
        "table_digest": read_lineage_rows(table)[-1]["chain_sha256"],
        "records": len(ids),
    }
    assert list(staging_dir(target).iterdir()) == []
    stamp = (target / "cases" / ids[0] / "image" / "zarr.json").stat().st_mtime_ns
    assert write_synthetic(target, volumes) == []
    assert (target / "cases" / ids[0] / "image" / "zarr.json").stat().st_mtime_ns == stamp


def test_a_volume_that_fails_its_read_back_check_is_never_published(tmp_path, volumes, monkeypatch):
    def refuse(staged, volume):
        raise StoreError(staged, "does not read back identically")

    monkeypatch.setattr(synthetic_store, "_check_staged", refuse)
    target = tmp_path / "synthetic.zarr"
    with pytest.raises(StoreError, match="read back"):
        write_synthetic(target, volumes[:1])
    assert list_synthetic(target) == []
    assert list(staging_dir(target).iterdir()) == []
    assert not (target / LINEAGE).exists()


def test_rows_pass_the_synthetic_contract_and_catch_broken_volumes(volumes):
    rows = [synthetic_row(volume) for volume in volumes]
    for row, volume in zip(rows, volumes, strict=True):
        assert row["shape_matches_mask"] is True and row["nonfinite_voxels"] == 0 and row["lineage_missing"] == 0
        assert row["image_min"] == float(volume.image.min()) and row["image_std"] == pytest.approx(volume.image.std())
    broken_image = volumes[0].image.copy()
    broken_image[0, 0, :3] = np.nan
    broken = SyntheticVolume(
        volumes[0].plan.model_copy(update={"synthetic_id": "syn-broken"}),
        broken_image,
        volumes[0].mask[:-1],
        volumes[0].lineage.model_copy(update={"checkpoints": []}),
    )
    broken_row = synthetic_row(broken)
    assert broken_row["nonfinite_voxels"] == 3 and broken_row["shape_matches_mask"] is False
    assert broken_row["lineage_missing"] == 1
    untrained = SyntheticContractConfig(unclamped_limit=1e3, max_clamped_fraction=1.0)  # untrained-model noise
    result = synthetic_contract(pd.DataFrame([*rows, broken_row]), limits=untrained)
    assert result.failed_case_ids == ["syn-broken"]
    assert set(synthetic_contract(pd.DataFrame(rows)).failed_case_ids) == {row["synthetic_id"] for row in rows}


def test_quarantine_appends_entries_atomically(tmp_path):
    target = tmp_path / "synthetic.zarr"
    quarantine(target, "syn-a", "mask is empty")
    path = quarantine(target, "syn-b", "contract failed")
    entries = json.loads(path.read_text())
    assert [(entry["synthetic_id"], entry["reason"]) for entry in entries] == [
        ("syn-a", "mask is empty"),
        ("syn-b", "contract failed"),
    ]
    assert [child.name for child in path.parent.iterdir()] == ["quarantine.json"]


def test_volume_digests_change_with_one_voxel_of_image_or_mask(tmp_path, volumes):
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    write_synthetic(first, volumes)
    image, mask = volumes[0].image.copy(), volumes[0].mask.copy()
    image[0, 0, 0] += 0.5
    mask[-1, -1, -1] = 0 if mask[-1, -1, -1] else 1
    changed = [
        SyntheticVolume(volumes[0].plan, image, volumes[0].mask, volumes[0].lineage),
        SyntheticVolume(volumes[1].plan, volumes[1].image, mask, volumes[1].lineage),
    ]
    write_synthetic(second, changed)
    original, edited = volume_digests(first), volume_digests(second)
    assert set(original) == set(edited) == {volume.plan.synthetic_id for volume in volumes}
    assert all(original[key] != edited[key] for key in original)
    assert volume_digests(first) == original
