"""The checkers of chapter 10's exercises (10.1-10.3): right answers pass, common mistakes get
their hint."""
from __future__ import annotations

import copy

import pytest
import torch

from maskutils import DigitsResNet, count_parameters, prune_units, shrink
from maskutils.exercises import check, exercises
from tiny_hf import tiny_model


def test_chapter_10_has_its_checkers():
    assert {"10.1", "10.2", "10.3"} <= set(exercises())


def test_10_1_the_shrunk_count_passes_and_it_matches_shrink(capsys):
    assert check("10.1", 5050, channels=32, residual=16, inner=8)
    assert capsys.readouterr().out.startswith("✅ 10.1")
    net = DigitsResNet(channels=32)
    x = torch.zeros(2, 64)
    prune_units(net, 0.5, example_inputs=x)
    assert check("10.1", count_parameters(shrink(net, example_inputs=x)), channels=32,
                 residual=16, inner=16)


@pytest.mark.parametrize("answer, says", [
    (37802 - 5050, "what shrink removes"),
    (5050 - 2 * 16 * 3 - 2 * 8 * 2, "BatchNorm"),
    (9690, "keeps 16 inner channels"),
    (12345, "is off"),
    ("many", "number"),
])
def test_10_1_mistakes_get_their_hint(answer, says, capsys):
    assert not check("10.1", answer, channels=32, residual=16, inner=8)
    out = capsys.readouterr().out
    assert out.startswith("❌ 10.1") and says in out


@pytest.fixture(scope="module")
def gpt2():
    pytest.importorskip("transformers")
    model = tiny_model("gpt2", n_head=4)
    return model, torch.randint(0, 64, (2, 8))


def test_10_2_the_feed_forward_groups_pass_and_others_say_why(gpt2, capsys):
    model, tokens = gpt2
    right = ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert check("10.2", right, model=model, example_inputs=tokens)
    assert not check("10.2", right + ["transformer.h.0.attn.c_attn"], model=model,
                     example_inputs=tokens)
    assert "split into attention heads" in capsys.readouterr().out
    assert not check("10.2", right[:1], model=model, example_inputs=tokens)
    assert "groups of units too" in capsys.readouterr().out
    assert not check("10.2", "transformer.h.0.mlp.c_fc", model=model, example_inputs=tokens)
    assert "list of str" in capsys.readouterr().out


def test_10_3_a_reloaded_quarter_passes_and_a_half_is_told(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    llama = tiny_model("llama", num_attention_heads=8, num_key_value_heads=4)
    ids = torch.randint(0, 64, (2, 8))
    for fraction, folder in ((0.75, tmp_path / "quarter"), (0.5, tmp_path / "half")):
        model = copy.deepcopy(llama)
        prune_units(model, 0.5, example_inputs=ids, head_sparsity=fraction)
        shrink(model, example_inputs=ids).save_pretrained(folder)
    quarter = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "quarter")
    assert check("10.3", quarter, original=llama)
    half = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "half")
    assert not check("10.3", half, original=llama)
    assert "num_key_value_heads is 2" in capsys.readouterr().out
