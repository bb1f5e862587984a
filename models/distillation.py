"""Knowledge distillation from the unpruned network: the loss a pruned network is
fine-tuned on when ``fine_tune.distill`` is set (``models.train``)."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional

__all__ = ["distillation_loss"]


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                      alpha: float, temperature: float, label_smoothing: float = 0.0) -> Tensor:
    """Hinton et al.'s knowledge-distillation loss.

    ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    + (1 - alpha) * cross_entropy(student, labels)``; the ``T^2`` keeps the soft
    term's gradients on the scale of the hard term's.

    Args:
        student_logits: the trained network's outputs.
        teacher_logits: the teacher's outputs for the same batch (no gradient).
        labels: the true classes.
        alpha: weight of the distillation term in [0, 1].
        temperature: softmax temperature T.
        label_smoothing: applied to the cross-entropy term.

    Returns:
        The scalar loss, averaged over the batch.
    """
    soft = functional.kl_div(
        functional.log_softmax(student_logits.float() / temperature, dim=1),
        functional.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * temperature**2
    hard = functional.cross_entropy(student_logits.float(), labels,
                                    label_smoothing=label_smoothing)
    return alpha * soft + (1 - alpha) * hard
