"""detkd.ranges.check_ranges: each rule's bounds, the flag shown, list values, None skipped."""

from types import SimpleNamespace

import pytest

from detkd.errors import ConfigError
from detkd.ranges import check_ranges


@pytest.mark.parametrize("kind, good, bad, rule", [
    ("positive", 1, 0, "must be at least 1"),
    ("unit", 1.0, 1.01, "must be a threshold in [0, 1]"),
    ("unit", 0.0, -0.01, "must be a threshold in [0, 1]"),
    ("non_negative", 0, -1, "must be >= 0"),
    ("above_zero", 0.01, 0, "must be above 0"),
])
def test_each_rule_bounds(kind, good, bad, rule):
    check_ranges(SimpleNamespace(some_value=good), **{kind: ("some_value",)})
    with pytest.raises(ConfigError) as e:
        check_ranges(SimpleNamespace(some_value=bad), **{kind: ("some_value",)})
    assert str(e.value) == f"--some-value {bad} {rule}."


def test_flag_name_list_values_and_none():
    args = SimpleNamespace(eval_conf=None, sizes=[64, 0, 96])
    check_ranges(args, unit=("eval_conf",))  # not given: not checked
    with pytest.raises(ConfigError, match=r"^--imgsz 0 must be at least 1\.$"):
        check_ranges(args, positive=("sizes",), flags={"sizes": "--imgsz"})
