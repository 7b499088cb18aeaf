"""The `gem3d` command line: typer commands on top of the Prefect flows; rich output for people."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

import flows  # noqa: F401  (applies the offline defaults before prefect, mlflow or GX are imported)
from gem3d.errors import InputError

if TYPE_CHECKING:
    from gem3d.lineage import AuditReport


class SupervisedTyper(typer.Typer):
    """Run as the `gem3d` program, the command works in a supervised child process group, so Prefect's
    temporary API server and any local worker processes never outlive it (`tasks.supervisor`)."""

    def __call__(self, *args, **kwargs):
        from tasks.supervisor import supervise

        return supervise(functools.partial(super().__call__, *args, **kwargs))


app = SupervisedTyper(help="GEM-3D generative enhancement for 3D medical images.", no_args_is_help=True)
console = Console()


@app.callback()
def show_progress() -> None:
    """Every command shows gem3d's own log lines (pipeline steps, progress off a terminal) on the console."""
    logger = logging.getLogger("gem3d")
    if not any(isinstance(handler, RichHandler) for handler in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_level=False, markup=False))
    logger.setLevel(logging.INFO)
    logger.propagate = False


ConfigOption = Annotated[
    str | None, typer.Option("--config", help="YAML config file or preset name (tiny, paper); default tiny")
]
DaskOption = Annotated[str | None, typer.Option("--dask-address", help="address of a running Dask scheduler")]
WorkersOption = Annotated[int, typer.Option("--workers", help="local Dask workers when no address is given")]


WRITE_ERRORS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.ENOTDIR, errno.EDQUOT, errno.EPERM, errno.EEXIST}


def friendly_errors(command: Callable) -> Callable:
    """Turn input and disk problems into one clear line and exit code 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as error:
            console.print(f"[red]error[/red] {error.path or '-'}: {error.reason}", markup=True, highlight=False)
        except FileExistsError as error:
            console.print(f"[red]error[/red] {error}", highlight=False)
        except OSError as error:
            if error.errno not in WRITE_ERRORS:
                raise
            console.print(f"[red]cannot write[/red] {error.filename or ''}: {error.strerror}", highlight=False)
        raise typer.Exit(2)

    return wrapper


def guarded(work_folder: Callable[[dict], Path], shared: bool = False) -> Callable:
    """Before any work: the MLflow server (when `MLFLOW_TRACKING_URI` names one) must answer and the work
    folder must be free; its lock is then held for the command's life. Either failure is one line and exit 2.

    `work_folder` maps the command's arguments to its work folder; `shared` lets synthesis commands, which
    publish under their store's own lock, run side by side (`tasks.locking`).
    """

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            from tasks.locking import WorkFolderBusy, work_folder_lock
            from tasks.tracking import TrackingServerUnavailable, check_tracking_server

            arguments = signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            try:
                check_tracking_server()
                with work_folder_lock(work_folder(arguments.arguments), f"gem3d {command.__name__}", shared):
                    return command(*args, **kwargs)
            except (TrackingServerUnavailable, WorkFolderBusy) as error:
                console.print(f"[red]error[/red] {error}", soft_wrap=True, highlight=False)
                raise typer.Exit(2) from None

        return wrapper

    return decorate


def _workdir_or_store_parent(arguments: dict) -> Path:
    """The work folder a store command uses: `--workdir`, else the store's parent (as its flow resolves it)."""
    return arguments["workdir"] or arguments["store"].parent


def _is_expected_failure(record: logging.LogRecord) -> bool:
    """Input and disk problems get one clear line from `friendly_errors`; Prefect need not log their tracebacks."""
    error = record.exc_info[1] if record.exc_info else None
    return isinstance(error, InputError) or (isinstance(error, OSError) and error.errno in WRITE_ERRORS)


def _error_names(kind: type) -> set[str]:
    return {kind.__name__} | {name for sub in kind.__subclasses__() for name in _error_names(sub)}


EXPECTED_ERRORS = _error_names(InputError) | {"NotADirectoryError", "PermissionError", "FileExistsError"}


def _only_unexpected(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not _is_expected_failure(record) and not any(f"exception {name}" in message for name in EXPECTED_ERRORS)


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_only_unexpected)


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
@friendly_errors
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
@friendly_errors
@guarded(_workdir_or_store_parent)
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
@friendly_errors
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
@friendly_errors
def export(
    store: Annotated[Path, typer.Option("--store", help="real Zarr store")],
    out: Annotated[Path, typer.Option("--out", help="output folder")],
    synthetic: Annotated[Path | None, typer.Option("--synthetic", help="synthetic store to export")] = None,
    format: Annotated[str, typer.Option("--format", help="nifti or nnunet")] = "nifti",
    dataset_id: Annotated[int, typer.Option("--dataset-id", help="nnU-Net dataset number")] = 501,
    name: Annotated[str, typer.Option("--name", help="nnU-Net dataset name")] = "GEM3D",
    normalised: Annotated[bool, typer.Option("--normalised", help="keep [-1, 1] intensities")] = False,
    held_out_synthetic: Annotated[
        Path | None,
        typer.Option(
            "--held-out-synthetic",
            help="nnunet: also write the synthetic volumes derived from test cases (never training data) here",
        ),
    ] = None,
) -> None:
    """Write cases to NIfTI with their true (source) affine, or a complete nnU-Net v2 raw dataset whose
    training data holds no synthetic volume derived from a test case."""
    from gem3d.export import export_case_nifti, export_nnunet_dataset, export_synthetic_nifti
    from gem3d.store import list_cases

    if held_out_synthetic is not None and format != "nnunet":
        raise typer.BadParameter("--held-out-synthetic applies to --format nnunet only")
    if format == "nnunet":
        result = export_nnunet_dataset(store, synthetic, out, dataset_id, name, held_out_synthetic)
        console.print(f"nnU-Net v2 raw dataset written to [bold]{result.folder}[/bold]")
        console.print(result.summary(), soft_wrap=True)
    elif format == "nifti" and synthetic is not None:
        written = export_synthetic_nifti(synthetic, store, out, original_units=not normalised)
        console.print(f"exported {len(written)} synthetic volumes to [bold]{out}[/bold]")
    elif format == "nifti":
        cases = list_cases(store)
        for case_id in cases:
            export_case_nifti(store, case_id, out, original_units=not normalised)
        console.print(f"exported {len(cases)} cases to [bold]{out}[/bold]")
    else:
        raise typer.BadParameter(f"--format must be nifti or nnunet, got {format!r}")


def _print_synthesis(title: str, outcome: dict) -> None:
    _print_summary(
        title,
        {**outcome, "written": len(outcome["written"]), "quarantined": len(outcome["quarantined"])},
        ("out", "planned", "written", "skipped", "quarantined", "lineage", "mlflow_run_id"),
    )
    for entry in outcome["quarantined"]:
        console.print(f"[yellow]quarantined[/yellow] {entry['synthetic_id']}: {entry['reason']}")


StoreOption = Annotated[Path, typer.Option("--store", help="real Zarr store")]
OutOption = Annotated[Path, typer.Option("--out", help="synthetic Zarr store (created or extended)")]
WorkdirOption = Annotated[Path | None, typer.Option("--workdir", help="where models/ and mlflow.db live")]


@app.command()
@friendly_errors
@guarded(_workdir_or_store_parent, shared=True)
def enhance(
    store: StoreOption,
    out: OutOption,
    setting: Annotated[str, typer.Option("--setting", help="ic, icma, ig or igma")] = "ic",
    per_case: Annotated[int, typer.Option("--per-case", min=1, help="variants per real case")] = 1,
    cases: Annotated[list[str] | None, typer.Option("--cases", help="case ids (default: training split)")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    dask_address: DaskOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Generate K synthetic variants per real training case."""
    from flows.enhance import enhance_flow
    from tasks.runners import make_task_runner

    flow = enhance_flow.with_options(task_runner=make_task_runner(dask_address, workers))
    outcome = flow(str(store), str(out), setting, per_case, cases, config, str(workdir) if workdir else None)
    _print_synthesis(f"Enhancement ({setting})", outcome)


@app.command()
@friendly_errors
@guarded(_workdir_or_store_parent, shared=True)
def counterfactual(
    store: StoreOption,
    out: OutOption,
    mask_from: Annotated[str, typer.Option("--mask-from", help="case whose mask is used")],
    slice_from: Annotated[str | None, typer.Option("--slice-from", help="CASE or CASE:SLICE for the look")] = None,
    edit: Annotated[list[str] | None, typer.Option("--edit", help="e.g. remove:1,2,3 flip rotate:2.5")] = None,
    variants: Annotated[int, typer.Option("--variants", min=1)] = 1,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
) -> None:
    """Counterfactual synthesis: one case's (edited) mask with another case's appearance."""
    from flows.counterfactual import counterfactual_flow

    outcome = counterfactual_flow(
        str(store), str(out), mask_from, slice_from, edit, variants, config, str(workdir) if workdir else None
    )
    _print_synthesis("Counterfactual", outcome)


@app.command()
@friendly_errors
@guarded(_workdir_or_store_parent, shared=True)
def deenhance(
    store: StoreOption,
    out: OutOption,
    reference: Annotated[list[str], typer.Option("--reference", help="CASE or CASE:SLICE (repeatable)")],
    cases: Annotated[list[str] | None, typer.Option("--cases", help="case ids (default: all)")] = None,
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    dask_address: DaskOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Dataset-level de-enhancement: regenerate every case in the reference appearance."""
    from flows.deenhance import deenhance_flow
    from tasks.runners import make_task_runner

    flow = deenhance_flow.with_options(task_runner=make_task_runner(dask_address, workers))
    outcome = flow(str(store), str(out), reference, cases, config, str(workdir) if workdir else None)
    _print_synthesis("De-enhancement", outcome)
    table = Table(title="Across-case spread of foreground intensity statistics (std)")
    for column in ("statistic", "before", "after", "after / before"):
        table.add_column(column)
    for name, entry in outcome["spread"]["statistics"].items():
        ratio = "-" if entry["std_ratio"] is None else f"{entry['std_ratio']:.2f}"
        table.add_row(name, f"{entry['std_before']:.4f}", f"{entry['std_after']:.4f}", ratio)
    console.print(table)


@app.command()
@friendly_errors
@guarded(_workdir_or_store_parent)
def evaluate(
    store: StoreOption,
    synthetic: Annotated[Path, typer.Option("--synthetic", help="synthetic store to evaluate")],
    out: Annotated[Path, typer.Option("--out", help="report folder")],
    config: ConfigOption = None,
    workdir: WorkdirOption = None,
    feature_extractor: Annotated[
        Path | None, typer.Option("--feature-extractor", help="TorchScript feature extractor (local path)")
    ] = None,
) -> None:
    """Fidelity, consistency, diversity, distribution distance and segmentation usefulness: an HTML report."""
    from flows.evaluate import evaluate_flow

    outcome = evaluate_flow(
        str(store),
        str(synthetic),
        str(out),
        config,
        str(workdir) if workdir else None,
        str(feature_extractor) if feature_extractor else None,
    )
    state = "reused (inputs unchanged)" if outcome["skipped"] else "written"
    console.print(f"report {state}: [bold]{outcome['report']}[/bold]")


@app.command()
@friendly_errors
def lineage(
    synthetic_id: Annotated[str, typer.Argument(help="synthetic volume id (syn-...)")],
    synthetic: Annotated[Path, typer.Option("--synthetic", help="synthetic store")] = Path("gem3d-work/synthetic.zarr"),
) -> None:
    """Print the chain from a synthetic volume back to the real files, checkpoint, code and seed."""
    from gem3d.lineage import format_chain
    from gem3d.synthetic_store import read_synthetic

    _, _, record = read_synthetic(synthetic, synthetic_id)
    console.print(format_chain(record), markup=False)


@contextmanager
def _audit_progress(shown: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar over the audit's hashing jobs, or no callback when nobody watches a terminal."""
    if not shown:
        yield None
        return
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console, transient=True) as progress:
        bar = progress.add_task("hashing volumes and files", total=None)
        yield lambda done, total: progress.update(bar, completed=done, total=total)


def _print_audit(report: AuditReport) -> None:
    counts = report.counts
    if report.passed:
        console.print(
            f"[green]audit passed[/green]: {counts['volumes']} synthetic volumes, their records and "
            f"{counts['files']} source files and checkpoints intact; table digest {report.table_digest}"
        )
        return
    table = Table(title=f"Audit problems ({len(report.problems)})")
    for column in ("kind", "synthetic id", "file", "reason"):
        table.add_column(column, overflow="fold")
    for problem in report.problems:
        table.add_row(problem.kind, problem.synthetic_id or "-", problem.path or "-", problem.reason)
    console.print(table)


@app.command()
@friendly_errors
def audit(
    synthetic: Annotated[Path, typer.Argument(help="synthetic store")],
    as_json: Annotated[bool, typer.Option("--json", help="print a machine-readable result (for CI)")] = False,
    expected_digest: Annotated[
        str | None,
        typer.Option("--expected-digest", help="the lineage table digest logged to MLflow (param lineage_digest)"),
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="hashing threads (default: pool's)")] = None,
) -> None:
    """Re-hash every synthetic volume and every source file and checkpoint its record names, and check the
    lineage table's hash chain and digest; exit 1 on anything missing, changed, edited or unrecorded."""
    from gem3d.synthetic_store import audit_synthetic_store

    with _audit_progress(console.is_terminal and not as_json) as on_progress:
        report = audit_synthetic_store(synthetic, expected_digest, threads, on_progress)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_audit(report)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def reproduce(
    synthetic: Annotated[Path, typer.Argument(help="synthetic store")],
    ids: Annotated[list[str] | None, typer.Argument(help="synthetic volume ids (default: a sample)")] = None,
    sample: Annotated[int, typer.Option("--sample", min=1, help="volumes to check when no ids are given")] = 3,
    device: Annotated[str | None, typer.Option("--device", help="torch device (default: the config's)")] = None,
) -> None:
    """Regenerate volumes from their recorded plan, config and checkpoints and compare them voxel by voxel;
    exit 1 when any is not reproduced (bit-identical, or within the stated tolerance) or cannot be regenerated."""
    from gem3d.reproduce import REPRODUCED_DB, regenerate
    from gem3d.synthetic_store import list_synthetic

    available = list_synthetic(synthetic)
    if not ids:
        step = max(1, len(available) // sample)
        ids = available[::step][:sample]
    table = Table(title=f"Regenerated from {synthetic}")
    for column in ("synthetic id", "identical", "max |diff|", "PSNR dB", "verdict"):
        table.add_column(column, overflow="fold")
    failed = 0
    for synthetic_id in ids:
        try:
            outcome = regenerate(synthetic, synthetic_id, device)
        except (InputError, ValueError) as error:
            failed += 1
            table.add_row(synthetic_id, "-", "-", "-", f"cannot regenerate: {error}")
            continue
        failed += not outcome.reproduced
        verdict = "reproduced" if outcome.reproduced else "NOT reproduced"
        table.add_row(
            synthetic_id,
            "yes" if outcome.identical else "no",
            f"{outcome.max_abs_difference:.2e}",
            f"{outcome.psnr_db:.1f}",
            verdict,
        )
    console.print(table)
    console.print(f"tolerance: bit-identical, or PSNR >= {REPRODUCED_DB:.0f} dB with an identical mask")
    if failed or not ids:
        raise typer.Exit(1)


@app.command()
@friendly_errors
@guarded(_workdir_or_store_parent)
def train(
    store: Annotated[Path, typer.Option("--store", help="Zarr store written by `gem3d preprocess`")],
    stage: Annotated[str, typer.Option("--stage", help="1, 2, slicegen, baseline, autoencoder or all")] = "all",
    config: ConfigOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="models and MLflow store location")] = None,
) -> None:
    """Train GEM-3D (stage 1, stage 2, slice generator, baseline), tracked in MLflow."""
    from flows.train import train_flow

    stage = {"1": "stage1", "2": "stage2"}.get(stage, stage)
    results = train_flow(str(store), config, stage, resume, str(workdir) if workdir else None)
    table = Table(title="Training")
    for column in ("stage", "loss (first -> final)", "steps", "model", "bundle"):
        table.add_column(column, overflow="fold")
    for name, result in results.items():
        loss = f"{result['first_loss']:.4f} -> {result['final_loss']:.4f}" + (" (reused)" if result["skipped"] else "")
        model = f"{result['model_name']} v{result['model_version']}"
        table.add_row(name, loss, str(result["steps"]), model, result["bundle"])
    console.print(table)


@app.command()
@friendly_errors
@guarded(lambda arguments: arguments["workdir"])
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
    table = Table(title="gem3d run", show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "\n".join(f"{name}: {text}" for name, text in value.items())
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"open the report: [bold]{summary['report']}[/bold]")


if __name__ == "__main__":
    app()
