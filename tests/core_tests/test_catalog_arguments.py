"""Every builder argument a spec may set has a type and a range in the catalog, and each
architecture's defaults are within them."""

from __future__ import annotations

import pytest

from core.catalog import ARCHITECTURES, ArgumentRule, plugin_argument_problem


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_settable_argument_has_a_rule_its_default_meets(name: str) -> None:
    info = ARCHITECTURES[name]
    assert set(info.argument_rules) == set(info.arguments) - {"num_classes"}
    for argument, rule in info.argument_rules.items():
        assert rule.problem(info.arguments[argument]) is None, (name, argument)


def test_rules_say_what_is_wrong() -> None:
    width = ArgumentRule("int", minimum=4, maximum=128)
    assert width.problem(16) is None
    assert width.problem(129) == "must be at most 128"
    assert width.problem(3) == "must be at least 4"
    assert width.problem(True) == width.problem(16.0) == "must be an integer"
    assert ArgumentRule("bool").problem(1) == "must be true or false"
    assert ArgumentRule("int", choices=(1, 3)).problem(2) == "must be one of 1, 3"


def test_plugin_arguments_are_a_few_plain_values() -> None:
    for value in (1, -2.5, "resnet", True, None):
        assert plugin_argument_problem(value) is None
    for value in ([1], {"a": 1}, "x" * 201, 2**40, 1e300):
        assert plugin_argument_problem(value) is not None
