"""``service.trials.StudyReader`` in the API process: Optuna is imported when the reader is
built, not by the first requests (two threads importing it at once can find a module
half-initialised: an ImportError and a 500, seen in the browser tests under load)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import REPOSITORY

# A fresh interpreter (Optuna not imported yet), a real study in SQLite, and several
# threads reading it at the same moment, as the API's thread pool does when a page asks
# for a job's trials and its Pareto front together.
_FIRST_READS_AT_ONCE = textwrap.dedent("""
    import subprocess, sys, threading
    from pathlib import Path

    folder, threads = Path(sys.argv[1]), 8
    url = f"sqlite:///{folder / 'optuna.db'}"
    subprocess.run([sys.executable, "-c",
                    "import optuna, sys; study = optuna.create_study("
                    "storage=sys.argv[1], study_name='s'); "
                    "study.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=3)", url],
                   check=True, capture_output=True)
    from service.trials import StudyReader

    assert "optuna" not in sys.modules
    reader, barrier, failures, counts = StudyReader(url), threading.Barrier(threads), [], []
    # imported by the thread that builds the reader, never by two request threads at once
    assert "optuna.storages" in sys.modules

    def read():
        barrier.wait()
        try:
            counts.append(len(reader.trials("s")))
        except Exception as error:
            failures.append(repr(error))

    workers = [threading.Thread(target=read) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    reader.close()
    assert not failures, failures
    assert counts == [3] * threads, counts
""")


def test_the_first_reads_of_several_threads_at_once_all_succeed(tmp_path) -> None:
    for attempt in range(3):  # the race was in the first import: a fresh process each time
        folder = tmp_path / str(attempt)
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", _FIRST_READS_AT_ONCE, str(folder)],
                              cwd=REPOSITORY, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
