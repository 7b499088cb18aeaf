"""Validation flow: run the preprocessed and training-ready contracts on a store's manifest."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from data_contracts import preprocessed_contract, training_ready_contract
from data_contracts.runner import ContractResult
from gem3d.store import read_manifest, store_attributes


@flow(name="validate-store")
def validate_store(store: str) -> list[ContractResult]:
    """Validate a store against its own recorded sizes and labels; results are saved under `validation/`."""
    store_path = Path(store)
    attributes = store_attributes(store_path)
    manifest = read_manifest(store_path)
    num_classes = len(attributes["labels"]) if attributes.get("labels") else 256
    results = [
        preprocessed_contract(manifest, attributes["in_plane_size"], attributes["window_length"], num_classes),
        training_ready_contract(manifest, attributes["window_length"], attributes["in_plane_size"]),
    ]
    for result in results:
        result.save(store_path / "validation" / f"{result.contract}.json")
    return results
