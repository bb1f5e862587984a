"""How the CLI shows jobs: summaries, metric and trial tables, a live progress view.

Rendering only (rich); the commands in ``cli.jobs`` and the demo fetch
the data through ``cli.client`` and hand it here.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {"queued": "cyan", "preparing": "cyan", "searching": "blue",
                 "finalizing": "magenta", "succeeded": "green", "failed": "red",
                 "cancelled": "yellow"}


def format_count(value: float | None, unit: str = "") -> str:
    """``1234567`` -> ``1.23 M``; None -> ``-``."""
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def format_number(value: float | None, unit: str, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g} {unit}"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# (label, key in a metrics dict, formatter, lower is better). A job's ``accuracy`` is
# measured on the validation split the search selects on; ``test_accuracy`` on the
# held-out test split nothing was selected on. A row neither side has is left out.
METRIC_ROWS: list[tuple[str, str, Any, bool]] = [
    ("accuracy (val)", "accuracy", format_percent, False),
    ("accuracy (test)", "test_accuracy", format_percent, False),
    ("latency", "latency_ms", lambda v: format_number(v, "ms"), True),
    ("memory", "memory_mb", lambda v: format_number(v, "MiB"), True),
    ("FLOPs (MACs)", "flops", format_count, True),
    ("parameters", "params", format_count, True),
]


def ratio_text(before: float | None, after: float | None, lower_is_better: bool) -> Text:
    """``x0.48`` (costs) or ``-1.2 pts`` (accuracy), green when it improved."""
    if before is None or after is None:
        return Text("-")
    if not lower_is_better:
        change = 100 * (after - before)
        return Text(f"{change:+.1f} pts", style="green" if change >= 0 else "yellow")
    if not before:
        return Text("-")
    ratio = after / before
    return Text(f"x{ratio:.2f}", style="green" if ratio <= 1 else "red")


def metrics_table(before: dict[str, Any] | None, after: dict[str, Any] | None, *,
                  title: str | None = None, before_label: str = "baseline",
                  after_label: str = "best so far") -> Table:
    """Before / after / change for accuracy, latency, memory, FLOPs and parameters."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column(before_label, justify="right")
    table.add_column(after_label, justify="right")
    table.add_column("change", justify="right")
    for label, key, formatter, lower_is_better in METRIC_ROWS:
        old = (before or {}).get(key)
        new = (after or {}).get(key)
        if old is None and new is None:
            continue  # not measured on either side (a test accuracy before finalising)
        table.add_row(label, formatter(old), formatter(new),
                      ratio_text(old, new, lower_is_better))
    return table


def status_text(job: dict[str, Any]) -> Text:
    status = job["status"]
    text = Text.assemble((f"{job['id']}", "bold"), f"  {job['name']}  ",
                         (status, STATUS_STYLES.get(status, "")))
    if job.get("phase"):
        text.append(f"  {job['phase']}", style="dim")
    return text


def finished_trials(progress: dict[str, Any]) -> int:
    return int(sum(progress.get(key) or 0
                   for key in ("trials_complete", "trials_pruned", "trials_failed")))


def _unwrapped(text: str, style: str = "") -> Text:
    """A line rich never breaks (the terminal may): ids and digests stay whole."""
    return Text(text, style=style, no_wrap=True, overflow="ignore")


def job_summary(job: dict[str, Any]) -> Group:
    """Everything ``topiary status`` prints about one job."""
    progress = job.get("progress") or {}
    lines: list[RenderableType] = [status_text(job)]
    lines.append(_unwrapped(
        f"trials {finished_trials(progress)}/{progress.get('trials_total', 0)} finished "
        f"({progress.get('trials_complete', 0)} complete, {progress.get('trials_pruned', 0)} "
        f"pruned, {progress.get('trials_failed', 0)} failed, {progress.get('trials_running', 0)} "
        f"running), elapsed {format_seconds(progress.get('elapsed_seconds'))}, "
        f"ETA {format_seconds(progress.get('eta_seconds'))}"))
    if job.get("error"):
        lines.append(_unwrapped(f"error ({job['error']['code']}): {job['error']['message']}",
                                style="red"))
    if job.get("baseline") or job.get("best"):
        label = "best" if job["status"] == "succeeded" else "best so far"
        best = job.get("best") or {}
        # The delivered model's test accuracy comes with the unpruned one's, measured by
        # the same worker on the same split.
        baseline = {**(job.get("baseline") or {}),
                    "test_accuracy": best.get("baseline_test_accuracy")}
        lines.append(metrics_table(baseline, job.get("best"), after_label=label))
    for artifact in job.get("artifacts") or []:
        lines.append(_unwrapped(f"{artifact['format']}: {format_count(artifact['size'], 'B')}, "
                          f"sha256 {artifact['sha256']}  (topiary download {job['id']} "
                          f"--format {artifact['format']})", style="dim"))
    return Group(*lines)


def _trial_state(trial: dict[str, Any], ended: bool) -> Text:
    state = trial["state"].lower()
    if state == "complete" and trial.get("feasible") is False:
        return Text("infeasible", style="yellow")
    if state == "waiting" and ended:
        # Enqueued (a warm-start plan) but the search had its trials first: never runs.
        return Text("not run", style="dim")
    return Text(state, style={"fail": "red", "running": "blue"}.get(state, ""))


def _channels_kept(plan: dict[str, Any], groups: list[dict[str, Any]] | None) -> str:
    """Channels the plan keeps in the prunable groups (a group it leaves whole keeps all; one
    in a dropped block none), and their share of the unpruned network's, or "-" unknown."""
    if not plan or not groups:
        return "-"
    keep, dropped = plan.get("keep") or {}, set(plan.get("drop_blocks") or [])
    total = sum(group["channels"] for group in groups)
    kept = sum(keep.get(group["name"], group["channels"]) for group in groups
               if group.get("block") not in dropped)
    return f"{kept} ({kept / total:.0%})" if total else "-"


def trials_table(trials: list[dict[str, Any]],
                 groups: list[dict[str, Any]] | None = None, ended: bool = False) -> Table:
    """One row per trial: state (infeasible = broke a limit), accuracy, costs, what was cut.

    Args:
        trials: the trials endpoint's rows.
        groups: the job baseline's prunable groups (name, channels, block), which the
            channels column counts from; without them it shows "-".
        ended: the job's search is over (a waiting trial then never runs: "not run").
    """
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption="channels: kept in the prunable groups (share of the unpruned "
                          "network's); dropped: residual blocks removed")
    for name in ("#", "state", "accuracy", "latency", "memory", "MACs", "params", "channels",
                 "dropped"):
        table.add_column(name, justify="left" if name == "state" else "right", no_wrap=True)
    for trial in trials:
        plan = trial.get("plan") or {}
        table.add_row(
            str(trial["number"]), _trial_state(trial, ended),
            format_percent(trial.get("accuracy")),
            format_number(trial.get("latency_ms"), "ms"),
            format_number(trial.get("memory_mb"), "MiB"),
            format_count(trial.get("flops")), format_count(trial.get("params")),
            _channels_kept(plan, groups),
            "-" if not plan else str(len(plan.get("drop_blocks") or [])))
    return table


class JobWatcher:
    """Shows a job while ``TopiaryClient.wait`` polls it (pass ``update`` as ``on_update``).

    On a terminal: a live view (status and phase, a bar of finished trials, the
    best-so-far table). Elsewhere (logs, CI, pipes): one line per change.

    Args:
        console: where to draw.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self._progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[timing]}"), console=console)
        self._task = self._progress.add_task("trials", total=None, timing="")
        self._live: Live | None = None
        self._last_line: str | None = None

    def __enter__(self) -> JobWatcher:
        if self.interactive:
            self._live = Live(console=self.console, refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        done, total = finished_trials(progress), progress.get("trials_total") or None
        if self._live is not None:
            timing = f"elapsed {format_seconds(progress.get('elapsed_seconds'))}"
            if progress.get("eta_seconds"):
                timing += f", ETA {format_seconds(progress['eta_seconds'])}"
            self._progress.update(self._task, completed=done, total=total, timing=timing)
            parts: list[RenderableType] = [status_text(job), self._progress]
            if job.get("baseline") or job.get("best"):
                parts.append(metrics_table(job.get("baseline"), job.get("best")))
            self._live.update(Group(*parts))
            return
        line = f"{job['status']}: {job.get('phase') or ''} (trials {done}/{total or '?'})"
        if line != self._last_line:
            self._last_line = line
            self.console.print(line, highlight=False, soft_wrap=True)
