import pytest
import torch

from maskutils import mean_range


def test_mean_range_formats_mean_min_and_max():
    assert mean_range([0.5, 0.25, 0.75]) == "50.0% (25.0-75.0%)"
    assert mean_range(torch.tensor([1.0, 3.0]), ".1f") == "2.0 (1.0-3.0)"
    assert mean_range([torch.tensor(0.2)], ".2f") == "0.20 (0.20-0.20)"


@pytest.mark.parametrize("values, error, match", [
    ([], ValueError, "empty"),
    ([0.1, float("nan")], ValueError, "NaN"),
    (["a"], TypeError, "numbers"),
    (3.0, TypeError, "numbers"),
])
def test_mean_range_rejects_bad_values(values, error, match):
    with pytest.raises(error, match=match):
        mean_range(values)


def test_mean_range_rejects_a_bad_format():
    with pytest.raises(TypeError, match="format spec"):
        mean_range([1.0], fmt=2)
