import pytest
import torch

from maskutils import digits_mlp, magnitude_mask, nm_mask
from maskutils.exercises import check, exercises


@pytest.fixture
def weight():
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(0))


def test_every_chapter_one_exercise_has_a_checker():
    assert {"1.1", "1.2", "1.3"} <= set(exercises())


def test_a_right_one_of_four_mask_passes(weight, capsys):
    assert check("1.1", nm_mask(weight, n=1, m=4), weight=weight)
    assert capsys.readouterr().out.startswith("✅ 1.1")


@pytest.mark.parametrize("answer, says", [
    (lambda w: nm_mask(w, n=2, m=4), "keeps 2 weights"),
    (lambda w: 1 - nm_mask(w, n=3, m=4), "not the largest"),
    (lambda w: nm_mask(w, n=1, m=4) * 0.5, "other than 0 and 1"),
    (lambda w: nm_mask(w, n=1, m=4)[:4], "has shape"),
    (lambda w: nm_mask(w, n=1, m=4).tolist(), "torch.Tensor"),
])
def test_a_wrong_one_of_four_mask_says_what_is_wrong(weight, capsys, answer, says):
    assert not check("1.1", answer(weight), weight=weight)
    out = capsys.readouterr().out
    assert out.startswith("❌ 1.1") and says in out


def test_global_masks_pass_and_layer_wise_masks_fail(capsys):
    model = digits_mlp()
    weights = [layer.weight.detach() for layer in model.linears()]
    threshold = torch.cat([w.abs().flatten() for w in weights]).quantile(0.8)
    assert check("1.2", [(w.abs() > threshold).float() for w in weights], model=model)
    layer_wise = [magnitude_mask(w, 0.8) for w in weights]
    assert not check("1.2", layer_wise, model=model)
    assert "one threshold for all layers" in capsys.readouterr().out


def test_the_expected_sparsity_of_two_masks(capsys):
    assert check("1.3", 0.75)
    assert not check("1.3", 0.25)
    assert "fraction kept" in capsys.readouterr().out


def test_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="no checker for exercise '9.9'"):
        check("9.9", None)
