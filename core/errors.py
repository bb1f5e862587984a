"""The project's error hierarchy: one root, a few meaningful subclasses.

Torch-free on purpose: the API process imports it to map errors to HTTP.
Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class TopiaryError(Exception):
    """Root of every error Topiary raises on purpose.

    Attributes:
        code: short machine-readable identifier (stable, used in API responses
            and in a failed job's ``error_code``).
    """

    code = "topiary_error"
    #: The same work may succeed when run again (a trial that raised it is re-queued).
    transient = False


class InvalidSpecError(TopiaryError):
    """A job spec, plan or argument that can never work (the user must change it)."""

    code = "invalid_spec"


class UnknownArchitectureError(InvalidSpecError):
    code = "unknown_architecture"


class DatasetError(TopiaryError):
    """A dataset that cannot be found, read or understood."""

    code = "dataset_error"


class InvalidPlanError(InvalidSpecError):
    """A prune plan that does not fit the network it is applied to."""

    code = "invalid_plan"


class CheckpointError(TopiaryError):
    """Weights or a pruned checkpoint that cannot be loaded."""

    code = "checkpoint_error"


class UnsafeCheckpointError(CheckpointError):
    """A weights file that would need arbitrary code to load (a pickle with code)."""

    code = "unsafe_checkpoint"


class TrainingCancelled(TopiaryError):
    """A training loop stopped because its cancel event was set (not a failure)."""

    code = "cancelled"


class TrainingDivergedError(TopiaryError):
    """The training loss became NaN or infinite (lower the learning rate)."""

    code = "training_diverged"


class ExportError(TopiaryError):
    """A model that could not be exported (ONNX, TorchScript)."""

    code = "export_failed"


class LatencyAgentError(TopiaryError):
    """A remote latency agent that is not configured, or refused a request (its secret,
    a model it cannot run); the message names the agent."""

    code = "latency_agent_error"


class LatencyAgentUnavailableError(LatencyAgentError):
    """A latency agent that did not answer, or stayed busy, for the whole wait."""

    code = "latency_agent_unavailable"
    transient = True
