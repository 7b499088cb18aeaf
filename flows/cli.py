"""The `gem3d` command line: typer commands on top of the Prefect flows; rich output for people."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import flows  # noqa: F401  (applies the offline defaults before prefect, mlflow or GX are imported)

app = typer.Typer(help="GEM-3D generative enhancement for 3D medical images.", no_args_is_help=True)
console = Console()

ConfigOption = Annotated[
    str | None, typer.Option("--config", help="YAML config file or preset name (tiny, paper); default tiny")
]
DaskOption = Annotated[str | None, typer.Option("--dask-address", help="address of a running Dask scheduler")]
WorkersOption = Annotated[int, typer.Option("--workers", help="local Dask workers when no address is given")]


def _print_quarantine(records: list[dict]) -> None:
    if not records:
        return
    table = Table(title="Quarantined", show_lines=False)
    for column in ("case", "file", "problem"):
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(
            str(record.get("case_id") or "-"), record.get("path", ""), f"{record['kind']}: {record['reason']}"
        )
    console.print(table)


def _print_summary(title: str, summary: dict, keys: tuple[str, ...]) -> None:
    table = Table(title=title, show_header=False)
    for key in keys:
        table.add_row(key, str(summary.get(key)))
    console.print(table)


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option("--out", help="output folder (must be empty or absent)")],
    kind: Annotated[str, typer.Option("--kind", help="brain or abdomen")] = "brain",
    cases: Annotated[int, typer.Option("--cases", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a built-in phantom dataset in Medical Segmentation Decathlon layout."""
    from gem3d.io.phantoms import write_phantom_dataset

    if kind not in ("brain", "abdomen"):
        raise typer.BadParameter(f"--kind must be brain or abdomen, got {kind!r}")
    root = write_phantom_dataset(out, kind, cases, seed)
    console.print(f"wrote {cases} {kind} phantom cases to [bold]{root}[/bold]")


@app.command()
def preprocess(
    dataset: Annotated[Path, typer.Option("--dataset", help="MSD, nnU-Net v2 raw, or image/label pairs folder")],
    store: Annotated[Path, typer.Option("--store", help="Zarr store to create or update")],
    config: ConfigOption = None,
    channel: Annotated[str | None, typer.Option("--channel", help="channel name or index (e.g. FLAIR)")] = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="MLflow store location")] = None,
    dask_address: DaskOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Ingest and preprocess a dataset into a validated Zarr store."""
    from flows.preprocess import run_preprocess

    summary = run_preprocess(
        str(dataset), str(store), config, channel, str(workdir) if workdir else None, dask_address, workers
    )
    _print_summary(
        "Preprocessing",
        summary,
        (
            "store",
            "layout",
            "cases",
            "processed",
            "skipped",
            "published",
            "quarantined",
            "seconds",
            "config_hash",
        ),
    )
    _print_quarantine(summary["quarantine"])
    if summary["published"] == 0:
        console.print("[red]no case could be preprocessed[/red]")
        raise typer.Exit(1)


@app.command()
def validate(
    store: Annotated[Path, typer.Argument(help="Zarr store written by `gem3d preprocess`")],
) -> None:
    """Run the data contracts on a store; exit non-zero on failure."""
    from flows.validate import validate_store

    results = validate_store(str(store))
    table = Table(title=f"Contracts on {store}")
    for column in ("contract", "passed", "failures"):
        table.add_column(column, overflow="fold")
    for result in results:
        reasons = "\n".join(f"{f.get('case_id') or 'table'}: {f['reason']}" for f in result.failures[:20])
        table.add_row(result.contract, "yes" if result.passed else "[red]no[/red]", reasons)
    console.print(table)
    if not all(result.passed for result in results):
        raise typer.Exit(1)


@app.command()
def export(
    store: Annotated[Path, typer.Option("--store", help="Zarr store")],
    out: Annotated[Path, typer.Option("--out", help="output folder for NIfTI files")],
    normalised: Annotated[bool, typer.Option("--normalised", help="keep [-1, 1] intensities")] = False,
) -> None:
    """Write every case of a store back to NIfTI with its true affine."""
    from gem3d.export import export_case_nifti
    from gem3d.store import list_cases

    cases = list_cases(store)
    for case_id in cases:
        export_case_nifti(store, case_id, out, original_units=not normalised)
    console.print(f"exported {len(cases)} cases to [bold]{out}[/bold]")


@app.command()
def run(
    dataset: Annotated[Path | None, typer.Option("--dataset", help="dataset folder; phantoms when absent")] = None,
    config: ConfigOption = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="where stores, models and reports go")] = Path(
        "gem3d-work"
    ),
    dask_address: DaskOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Run the whole pipeline (built-in brain phantoms and the tiny preset by default)."""
    from flows.pipeline import run_pipeline

    summary = run_pipeline(str(dataset) if dataset else None, config, str(workdir), dask_address, workers)
    _print_summary("gem3d run", summary, tuple(key for key in summary if key != "quarantine"))
    _print_quarantine(summary.get("quarantine", []))


if __name__ == "__main__":
    app()
