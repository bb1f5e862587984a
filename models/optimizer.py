"""The training recipe's parts: optimiser, parameter groups, schedule, precision.

* Weight decay skips norm-layer weights and biases unless asked otherwise: they
  are one-dimensional, and decaying them only shrinks what BatchNorm rescales anyway.
* SGD with Nesterov momentum, or AdamW.
* The learning rate rises linearly for the warm-up steps, then follows a cosine
  to zero at the last step.
* Mixed precision on CUDA is bfloat16 where the GPU supports it (no gradient
  scaling needed), float16 with a gradient scaler elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["autocast", "autocast_dtype", "make_optimizer", "make_schedule", "parameter_groups"]


def parameter_groups(model: nn.Module, weight_decay: float,
                     decay_norm_and_bias: bool) -> list[dict[str, object]]:
    """The model's trainable parameters, with weight decay where it belongs.

    Args:
        model: the network.
        weight_decay: the decay of weights (conv and linear kernels).
        decay_norm_and_bias: decay one-dimensional parameters (norm-layer weights,
            biases) as well.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": parameters, "weight_decay": weight_decay}]
    return [{"params": [p for p in parameters if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, name: str, learning_rate: float, momentum: float,
                   weight_decay: float, decay_norm_and_bias: bool) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov momentum) or ``adamw`` over ``parameter_groups``."""
    groups = parameter_groups(model, weight_decay, decay_norm_and_bias)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate)
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=True)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``warmup_steps``, then a cosine to zero at ``total_steps``
    (stepped once per optimiser step)."""
    total_steps = max(1, total_steps)
    if warmup_steps <= 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup_steps + 1),
                                               total_iters=warmup_steps)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine],
                                                 milestones=[warmup_steps])


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a CUDA device that supports it, else float16."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision as training uses it: ``autocast_dtype``, or a no-op when disabled."""
    return torch.autocast(device_type=device.type, dtype=autocast_dtype(device),
                          enabled=enabled)
