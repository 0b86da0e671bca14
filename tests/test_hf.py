"""maskutils on HuggingFace transformers models built from tiny configs (random weights, no download)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

from maskutils import (apply_mask, get_mask, load_dense_state_dict, mask_layers,  # noqa: E402
                       masked_parameters, nm_mask, remove_masks, sparsity)

from tiny_hf import tiny_model  # noqa: E402


def _gpt2(seed=0):
    return tiny_model("gpt2", seed, bos_token_id=0, eos_token_id=0)


def _bert(seed=0):
    return tiny_model("bert", seed)


IDS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_gpt2_every_conv1d_weight_is_masked_and_the_tied_embedding_is_named():
    model = _gpt2()
    conv1d = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)}
    assert len(conv1d) == 8
    with pytest.warns(UserWarning, match=r"transformer\.wte\.weight: an embedding.*"
                                         r"tied to lm_head\.weight.*transformer\.wpe\.weight"):
        result = mask_layers(model, 0.5)
    assert set(result) == conv1d
    assert set(result.left_out) == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert model.lm_head.weight is model.transformer.wte.weight   # untouched, still one tensor
    for name in conv1d:
        assert sparsity(model.get_submodule(name[:-len(".weight")]).weight) == 0.5


def test_gpt2_tie_is_masked_once_then_baked_saved_and_reloaded_identically(tmp_path):
    model = _gpt2()
    result = mask_layers(model, 0.5, embeddings=True)
    assert result.tied == {"transformer.wte.weight": ["lm_head.weight"]}
    assert get_mask(model.lm_head) is get_mask(model.transformer.wte)
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    masked_logits = _logits(model)
    remove_masks(model)                                  # bake: plain tensors, same values
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(_logits(model), masked_logits)
    model.tie_weights()                                  # the ecosystem's helpers work again
    model.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(_logits(loaded), masked_logits)
    baked_zeros = {n: int((p == 0).sum()) for n, p in model.named_parameters()}
    assert {n: int((p == 0).sum()) for n, p in loaded.named_parameters()} == baked_zeros
    assert baked_zeros["transformer.wte.weight"] == 64 * 32 // 2


def test_gpt2_2_4_on_conv1d_groups_its_input_dimension_0():
    model = _gpt2()
    c_fc = model.transformer.h[0].mlp.c_fc            # Conv1D weight: (in=32, out=128)
    assert tuple(c_fc.weight.shape) == (32, 128)
    apply_mask(c_fc, nm_mask(c_fc.weight, n=2, m=4, dim=0))
    kept = get_mask(c_fc).reshape(8, 4, 128).sum(dim=1)
    assert (kept == 2).all()
    x = torch.randn(3, 32)
    torch.testing.assert_close(c_fc(x), x @ c_fc.weight + c_fc.bias)


def test_gpt2_masked_weights_stay_zero_through_training_and_deepcopy():
    model = _gpt2().train()
    mask_layers(model, 0.6, embeddings=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        out = model(IDS, labels=IDS)
        out.loss.backward()
        opt.step()
    twin = copy.deepcopy(model).eval()
    model.eval()
    assert torch.equal(_logits(twin), _logits(model))
    for param, mask in masked_parameters(model).items():
        assert (param.grad[mask == 0] == 0).all()
    assert sparsity(model.lm_head.weight) == pytest.approx(0.6, abs=1e-3)


def test_a_dense_hf_checkpoint_loads_into_a_masked_gpt2():
    dense = _gpt2(seed=1)
    masked = _gpt2(seed=2)
    mask_layers(masked, 0.5, embeddings=True)
    load_dense_state_dict(masked, dense.state_dict())
    for name, mod in masked.named_modules():
        if isinstance(mod, Conv1D):
            source = dense.get_submodule(name).weight
            assert torch.equal(mod.weight, source * get_mask(mod))


def test_bert_bake_then_save_pretrained_reloads_the_same_logits_and_zeros(tmp_path):
    model = _bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the embeddings left out
        result = mask_layers(model, 0.5)
    assert any("attention.self.query.weight" in n for n in result)
    masked_logits = _logits(model)
    remove_masks(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded), masked_logits, rtol=0, atol=0)
    for name, param in loaded.named_parameters():
        if name in result:
            assert sparsity(param) == 0.5, name


def test_bert_saved_without_baking_does_not_round_trip(tmp_path):
    """Why the book bakes first: the masked names are not the architecture's names."""
    model = _bert()
    mask_layers(model, 0.5, embeddings=False)
    masked_logits = _logits(model)
    try:
        model.save_pretrained(tmp_path)
    except Exception:
        return                                           # refused outright: also not silent
    loaded = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert not torch.allclose(_logits(loaded), masked_logits)


def test_checker_7_2_wants_2_4_along_the_inputs_of_every_conv1d(capsys):
    from maskutils.exercises import check

    def masked(dim):
        model = _gpt2()
        for layer in model.modules():
            if isinstance(layer, Conv1D):
                apply_mask(layer, nm_mask(layer.weight, n=2, m=4, dim=dim))
        return model

    assert check("7.2", masked(0))
    assert capsys.readouterr().out.startswith("✅ 7.2")
    assert not check("7.2", masked(1))
    assert "dim=1, the outputs" in capsys.readouterr().out
    assert not check("7.2", _gpt2())
    assert "has no mask" in capsys.readouterr().out
