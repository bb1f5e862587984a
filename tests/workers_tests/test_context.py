from __future__ import annotations

from core.spec import JobSpec
from tests.support import tiny_spec
from workers.context import scored_dataset


def test_importance_scores_are_keyed_by_what_the_scorer_sees() -> None:
    plain = JobSpec.model_validate(tiny_spec())
    same = JobSpec.model_validate(tiny_spec())
    augmented = JobSpec.model_validate(tiny_spec(dataset={
        "name": "digits", "image_size": 16,
        "preprocessing": {"normalization": "custom", "mean": [0.5], "std": [0.25]}}))
    assert scored_dataset(plain) == scored_dataset(same)
    assert scored_dataset(plain) != scored_dataset(augmented)
