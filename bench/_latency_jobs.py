"""Real jobs under latency limits, for ``bench/latency.py --mode jobs|limits``.

Each job runs as a deployment runs it, embedded: a migrated SQLite database, the
job submitted through ``service.jobs``, one ``workers.worker.Worker`` on one CPU
thread taking it from queued to its end (baseline, scores, warm start, trials,
the final timing and its fallbacks, exports). Afterwards the delivered files are
timed again here, independently of the worker: the ONNX file against the unpruned
network exported the same way in ONNX Runtime, and the safetensors checkpoint
(``load_pruned``) against the unpruned network in eager PyTorch, each side by side
in rounds until the ratio is stable (``search.final_timing.stable_timing``), judged
as the worker judges it: the larger of the median ratio and the fastest passes'.

* ``--mode jobs``: cifar_resnet20 on digits at 16x16, one job limited to 0.5 of its
  ONNX Runtime latency and the same job limited to 0.5 of its eager latency; both
  delivered models timed in ONNX Runtime (and eager). Goal: the ONNX Runtime job meets
  0.5 there; the row of the eager job shows what its model gives an ONNX Runtime user.
* ``--mode limits``: ``--jobs`` jobs (limits 0.5 to 0.8, runtimes alternating eager
  and ONNX Runtime, seeds 0..n-1): how many deliver a model that meets its limit when
  re-timed afterwards (goal: all), how many fail saying by how much they missed (never
  a silent success above the limit), and how many succeed but miss on the re-time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.spec import JobSpec
from models import build_model
from models.checkpoints import load_weights
from models.export import export_onnx, load_pruned
from models.runtimes import SideBySide
from search.final_timing import stable_timing
from service.config import Settings
from service.db import create_engine_for, migrate, session_scope
from service.jobs import get_job, submit_job
from service.tenants import get_or_create_tenant
from workers.files import JobFiles
from workers.worker import Worker

SHAPE = (3, 16, 16)
RETIME_RUNS = 30


def job_spec(name: str, runtime: str, limit: float, seed: int, options: argparse.Namespace
             ) -> dict[str, Any]:
    """A small real job: cifar_resnet20 on 16x16 digits under a latency limit."""
    quick = options.quick
    return {
        "name": name, "seed": seed,
        "model": {"arch": "cifar_resnet20"},
        "dataset": {"name": "digits", "image_size": 16},
        "objective": {"constraints": {"max_latency_ratio": limit}},
        "latency": {"device": "cpu", "runtime": runtime, "threads": options.threads,
                    "runs": 10 if quick else 30, "warmup": 2},
        "search": {"n_trials": 2 if quick else options.trials,
                   "warm_start": [] if quick else ["pls"]},
        "fine_tune": {"trial_epochs": 1, "final_epochs": 1 if quick else 5,
                      "baseline_epochs": 2 if quick else 8},
    }


def run_jobs(specs: list[dict[str, Any]], home: Path, threads: int) -> list[str]:
    """Submit the jobs and let one embedded worker run them all; their ids."""
    settings = Settings(home=home, database_url=f"sqlite:///{home / 'topiary.db'}",
                        optuna_url=f"sqlite:///{home / 'optuna.db'}")
    settings.ensure_directories()
    migrate(settings.database_url)
    engine = create_engine_for(settings.database_url)
    tenant = get_or_create_tenant(engine, "bench")
    ids = []
    for spec in specs:
        with session_scope(engine) as session:
            assert settings.data_root is not None
            ids.append(submit_job(session, tenant.id, JobSpec.model_validate(spec),
                                  data_root=settings.data_root, max_active_jobs=1000).id)
    Worker(settings, device="cpu", threads=threads).run_forever(exit_when_idle=True)
    engine.dispose()
    return ids


def _ratio(side: SideBySide, candidate: Any) -> float:
    """The ratio the worker judges limits by (``FinalTiming.verdict_ratio``)."""
    loaded = side.load(candidate)
    return stable_timing(lambda runs: side.compare(loaded, 2, runs), RETIME_RUNS).verdict_ratio


def retime(home: Path, job_id: str, threads: int) -> dict[str, Any]:
    """The delivered files timed again, side by side with the unpruned network: the ONNX
    file in ONNX Runtime, the checkpoint in eager PyTorch."""
    engine = create_engine_for(f"sqlite:///{home / 'topiary.db'}")
    job = get_job(engine, job_id)
    engine.dispose()
    row: dict[str, Any] = {"job": job.name, "status": job.status, "error": job.error_code,
                           "runtime": job.latency_runtime,
                           "limit": job.spec["objective"]["constraints"]["max_latency_ratio"],
                           "best": job.best, "message": job.error_message}
    artifacts = {artifact.kind: Path(artifact.path) for artifact in job.artifacts}
    if "onnx" not in artifacts:
        return row
    # The unpruned network every trial was pruned from, beside the job's artifacts.
    baseline = artifacts["onnx"].parent / JobFiles(artifacts["onnx"].parent, home).baseline.name
    unpruned = load_weights(build_model("cifar_resnet20", num_classes=10), baseline).eval()
    reference = home / f"{job_id}-unpruned.onnx"
    export_onnx(unpruned, reference, SHAPE)
    row["onnxruntime_ratio"] = _ratio(
        SideBySide(reference, SHAPE, "onnxruntime", "cpu", threads=threads), artifacts["onnx"])
    row["torch_ratio"] = _ratio(SideBySide(unpruned, SHAPE, "torch", "cpu", threads=threads),
                                load_pruned(artifacts["safetensors"]).eval())
    return row


def _print_jobs(rows: list[dict[str, Any]]) -> None:
    print("| job | limited in | status | delivered ratio (its runtime) | re-timed in "
          "onnxruntime | re-timed eager | val accuracy | meets 0.5 in onnxruntime |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        best = row["best"] or {}
        ort = row.get("onnxruntime_ratio")
        print(f"| {row['job']} | {row['runtime']} | {row['status']} | "
              f"{best.get('latency_ratio', float('nan')):.3f} | "
              f"{'-' if ort is None else f'{ort:.3f}'} | "
              f"{row.get('torch_ratio', float('nan')):.3f} | "
              f"{best.get('accuracy', float('nan')):.3f} | "
              f"{'-' if ort is None else ('yes' if ort <= 0.5 else 'no')} |", flush=True)


def _print_limits(rows: list[dict[str, Any]]) -> None:
    print("| job | runtime | limit | status | delivered ratio | re-timed ratio | verdict |")
    print("|---|---|---|---|---|---|---|")
    counts = {"meets": 0, "stated miss": 0, "silent miss": 0, "other failure": 0}
    for row in rows:
        best = row["best"] or {}
        key = "onnxruntime_ratio" if row["runtime"] == "onnxruntime" else "torch_ratio"
        again = row.get(key)
        if row["status"] == "succeeded" and again is not None:
            verdict = "meets" if again <= row["limit"] else "silent miss"
        elif row["error"] == "limit_missed":
            verdict = "stated miss"
        else:
            verdict = "other failure"
        counts[verdict] += 1
        print(f"| {row['job']} | {row['runtime']} | {row['limit']} | {row['status']} | "
              f"{best.get('latency_ratio', float('nan')):.3f} | "
              f"{'-' if again is None else f'{again:.3f}'} | {verdict} |", flush=True)
    print(f"# {counts['meets']} of {len(rows)} delivered a model that meets its limit when "
          f"re-timed; {counts['stated miss']} failed stating the miss, "
          f"{counts['silent miss']} succeeded above the limit, "
          f"{counts['other failure']} failed otherwise")


def run_mode(options: argparse.Namespace) -> None:
    """``--mode jobs`` or ``--mode limits`` of ``bench/latency.py``."""
    torch.set_num_threads(options.threads)
    began = time.time()
    if options.mode == "jobs":
        specs = [job_spec("onnxruntime-0.5", "onnxruntime", 0.5, 0, options),
                 job_spec("eager-0.5", "torch", 0.5, 0, options)]
    else:
        count = 2 if options.quick else options.jobs
        limits = (0.5, 0.6, 0.7, 0.8)
        specs = [job_spec(f"limit-{index}", ("torch", "onnxruntime")[index % 2],
                          limits[index % len(limits)], index, options)
                 for index in range(count)]
    print(f"# {options.mode}: {len(specs)} jobs, cifar_resnet20 on digits 16x16, "
          f"{specs[0]['search']['n_trials']} trials each, CPU, {options.threads} thread(s); "
          "ratio = delivered / unpruned, side by side")
    with tempfile.TemporaryDirectory(prefix="topiary-bench-latency-") as folder:
        home = Path(folder)
        ids = run_jobs(specs, home, options.threads)
        rows = [retime(home, job_id, options.threads) for job_id in ids]
    (_print_jobs if options.mode == "jobs" else _print_limits)(rows)
    for row in rows:
        if row["message"]:
            print(f"# {row['job']}: {row['message']}")
    print(f"# {time.time() - began:.0f} s")
    if options.out is not None:
        options.out.write_text(json.dumps(rows, indent=1, default=str))
