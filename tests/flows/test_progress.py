"""Long work shows its progress: log lines at a steady interval off a terminal, bars on one, and Prefect
progress artifacts that reach 100% when the work is done (what a team watching the server's UI sees)."""

from __future__ import annotations

import logging
import sys

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from tasks import progress as progress_module
from tasks.progress import ProgressReporter


@pytest.fixture(autouse=True)
def _gem3d_logs_reach_caplog(monkeypatch):
    """The CLI stops gem3d's logs at its own console handler; let them reach pytest's capture here."""
    monkeypatch.setattr(logging.getLogger("gem3d"), "propagate", True)


def _progress_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "gem3d.progress"]


def test_off_a_terminal_a_line_is_logged_at_the_interval_and_at_the_end(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("GEM3D_PROGRESS_INTERVAL", "3600")
    caplog.set_level(logging.INFO, logger="gem3d.progress")
    with ProgressReporter("training stage1", 300) as reporter:
        for step in range(1, 301):
            reporter.update(step, loss=1.0 / step)
    lines = _progress_lines(caplog)
    assert len(lines) == 2  # the first update, then nothing until the interval passes or the work ends
    assert lines[0].startswith("training stage1 1/300 steps (0%), loss 1")
    assert lines[-1].startswith("training stage1 300/300 steps (100%), loss 0.003333") and lines[-1].endswith("done")


def test_a_short_interval_logs_rate_and_time_left(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    monkeypatch.setenv("GEM3D_PROGRESS_INTERVAL", "0")
    caplog.set_level(logging.INFO, logger="gem3d.progress")
    reporter = ProgressReporter("sampling enhance-ic", 8, "volumes")
    reporter.update(2)
    [line] = _progress_lines(caplog)
    assert line.startswith("sampling enhance-ic 2/8 volumes (25%)")
    assert " volumes/s" in line and line.endswith(" s left")


def test_on_a_terminal_a_bar_tracks_the_count_and_nothing_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.delenv("GEM3D_PROGRESS", raising=False)
    caplog.set_level(logging.INFO, logger="gem3d.progress")
    with ProgressReporter("evaluation", 1, "phases") as reporter:
        reporter.update(2, status="scoring setting ic", total=6)
        [task] = [task for task in progress_module._shared_bars().tasks if task.description == "evaluation"]
        assert (task.completed, task.total) == (2, 6)
        assert task.fields["detail"] == "scoring setting ic"
    assert not any(task.description == "evaluation" for task in progress_module._shared_bars().tasks)
    assert _progress_lines(caplog) == []


def _artifact_progress(key: str) -> list[float]:
    """The progress of every artifact with this key (each run of the work makes one)."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [float(artifact.data) for artifact in artifacts]


def test_inside_a_prefect_run_a_progress_artifact_reaches_the_server(prefect_harness, monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)

    @flow(name="progress-demo")
    def demo() -> None:
        with ProgressReporter("sampling demo-volumes", 4, "volumes") as reporter:
            for done in range(1, 5):
                reporter.update(done)

    demo()
    assert _artifact_progress("sampling-demo-volumes") == [pytest.approx(100.0)]


def test_the_pipeline_reported_training_and_evaluation_progress_to_prefect(micro_run):
    # other tests kill training part-way on the same server, so only some artifacts of a key reach 100%
    for key in ("training-stage1", "training-stage2", "sampling-enhance-ic", "evaluation"):
        progress = _artifact_progress(key)
        assert any(value == pytest.approx(100.0) for value in progress), key
        assert all(0.0 <= value <= 100.0 for value in progress), key
