"""One OpenVINO ``Core`` per process, kept for the process's life.

OpenVINO's CPU plugin gives the thread that compiles a model an alternate signal
stack and, when its ``Core`` is destroyed, puts back the stack it found. Cores
destroyed out of the order they were made (the garbage collector's order, two
networks timed side by side) leave a thread pointing at a freed stack, and the next
signal delivered to it with a Python handler installed (SIGCHLD once a DataLoader
had workers, SIGTERM in a worker) kills the process with SIGSEGV. One Core that is
never destroyed keeps that stack valid (``tests/models_tests/test_runtimes.py``).
Imported lazily: OpenVINO is an optional runtime.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def shared_core() -> Any:
    """The process's ``openvino.Core`` (created on first use)."""
    import openvino

    return openvino.Core()
