"""The server's run journal: what a restarted server resumes (runs its death cut off) and what it leaves."""

from __future__ import annotations

from server.journal import FAILED, FINISHED, RESUMED, JournalEntry, RunJournal, absolute_uri


def test_only_runs_still_marked_running_count_as_interrupted(tmp_path):
    journal = RunJournal(tmp_path / "fedrt-runs")
    assert journal.entries() == [] and journal.interrupted() == []
    cut = journal.write(JournalEntry(11, "a" * 32, "sqlite:///mlflow.db"))
    journal.mark(journal.write(JournalEntry(12, "b" * 32, "sqlite:///mlflow.db")), FINISHED)
    journal.mark(journal.write(JournalEntry(13, "c" * 32, "sqlite:///mlflow.db")), FAILED)
    assert journal.interrupted() == [cut]
    journal.mark(cut, RESUMED, resumed_by=14)
    assert journal.interrupted() == []
    assert [(e.flower_run_id, e.status, e.resumed_by) for e in RunJournal(tmp_path / "fedrt-runs").entries()] == [
        (11, RESUMED, 14), (12, FINISHED, None), (13, FAILED, None)]


def test_a_relative_sqlite_store_is_journalled_by_its_absolute_path(tmp_path):
    assert absolute_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert absolute_uri("sqlite:////srv/mlflow.db", tmp_path) == "sqlite:////srv/mlflow.db"
    assert absolute_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
