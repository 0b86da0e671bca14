"""The chapter 7 models (maskutils.models): shapes, bad input, and masking them safely."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from maskutils import (CharTransformerLM, DigitsCNN, DigitsLSTM, DigitsResNet, apply_mask,
                       get_mask,
                       mask_layers, masked_parameters, nm_mask, sparsity)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(model, steps=5, seed=0):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    model.train()
    for step in range(steps):
        x, y = _batch(seed=seed + step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("make", [DigitsCNN, DigitsLSTM, DigitsResNet],
                         ids=["cnn", "lstm", "resnet"])
def test_digits_models_map_flat_digits_to_ten_logits(make):
    torch.manual_seed(0)
    assert make()(torch.zeros(3, 64)).shape == (3, 10)


@pytest.mark.parametrize("call, message", [
    (lambda: DigitsCNN(channels=(8,)), "channels must be two positive ints"),
    (lambda: DigitsCNN(channels=(8, 0)), "channels must be two positive ints"),
    (lambda: DigitsLSTM(hidden=0), "hidden must be a positive int"),
    (lambda: DigitsLSTM(n_layers=True), "n_layers must be a positive int"),
    (lambda: DigitsCNN()(torch.zeros(2, 63)), "expected 64 pixels"),
    (lambda: DigitsResNet(channels=0), "channels must be a positive int"),
    (lambda: DigitsResNet(n_blocks=2.0), "n_blocks must be a positive int"),
    (lambda: DigitsResNet()(torch.zeros(2, 65)), "expected 64 pixels"),
])
def test_digits_models_reject_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("make, expected", [
    (DigitsCNN, {"features.0.weight", "features.3.weight", "head.weight"}),
    (DigitsLSTM, {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"}),
], ids=["cnn", "lstm"])
def test_masked_weights_stay_exactly_zero_through_training(make, expected):
    torch.manual_seed(0)
    model = make()
    result = mask_layers(model, 0.7)
    assert set(result) == expected and not result.left_out
    _train(model)
    for param, mask in masked_parameters(model).items():
        assert (param.grad[mask == 0] == 0).all()
    for name in result:
        module_name, _, pname = name.rpartition(".")
        effective = getattr(model.get_submodule(module_name), pname)
        assert (effective[result[name] == 0] == 0).all()
    assert sparsity(model) > 0.65


def test_cnn_2_4_along_input_channels_and_update_bn_after_masking():
    torch.manual_seed(0)
    cnn = DigitsCNN()
    first, second = cnn.convs()
    with pytest.raises(ValueError, match=r"dim=1 of weight \(8, 1, 3, 3\) has size 1"):
        nm_mask(first.weight)                       # one input channel: no 2:4 there
    apply_mask(second, nm_mask(second.weight))
    assert (get_mask(second).reshape(16, 2, 4, 3, 3).sum(dim=2) == 2).all()
    _train(cnn, steps=3)
    bn = cnn.features[4]
    stale = bn.running_mean.clone()
    loader = [(_batch(seed=s)[0],) for s in range(4)]
    update_bn(loader, cnn)                          # statistics of the masked network
    assert not torch.equal(bn.running_mean, stale)
    probe = copy.deepcopy(cnn).train()             # batch statistics, as update_bn sees them
    with torch.no_grad():
        means = [probe.features[:4](b[0].view(-1, 1, 8, 8)).mean(dim=(0, 2, 3))
                 for b in loader]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(dim=0),
                               rtol=1e-4, atol=1e-5)


def test_masked_lstm_model_deepcopies_and_averages_after_a_training_forward():
    torch.manual_seed(0)
    model = DigitsLSTM(hidden=16)
    mask_layers(model, 0.5)
    _train(model, steps=2)
    twin, avg = copy.deepcopy(model), AveragedModel(model)
    x = _batch(seed=9)[0]
    model.eval(), twin.eval(), avg.eval()
    torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    torch.testing.assert_close(avg.module(x), model(x), rtol=0, atol=0)


def test_char_transformer_lm_masked_tie_and_fast_path():
    torch.manual_seed(0)
    lm = CharTransformerLM(vocab_size=16, d_model=16, n_heads=2, n_layers=2, max_len=8)
    result = mask_layers(lm, 0.5, embeddings=True)
    assert result.tied == {"embed.weight": ["head.weight"]}
    ids = torch.randint(0, 16, (4, 8))
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        logits = lm(ids)
        F.cross_entropy(logits.reshape(-1, 16), ids.roll(-1, 1).reshape(-1)).backward()
        opt.step()
    assert torch.equal(lm.head.weight, lm.embed.weight)
    assert (lm.embed.weight[result["embed.weight"] == 0] == 0).all()
    lm.eval()
    slow = lm(ids)
    with torch.no_grad():
        fast = lm(ids)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_char_transformer_lm_keeps_its_interface():
    lm = CharTransformerLM(vocab_size=10, d_model=8, n_heads=2, n_layers=1, max_len=4)
    assert lm.head.weight is lm.embed.weight
    for name in ("embed", "position", "blocks", "norm", "head"):
        assert isinstance(getattr(lm, name), nn.Module)
    with pytest.raises(ValueError, match="longer than max_len=4"):
        lm(torch.zeros(1, 5, dtype=torch.long))


def test_checker_7_1_wants_the_tied_embedding_masked_once(capsys):
    from maskutils.exercises import check

    lm = CharTransformerLM(vocab_size=12, d_model=8, n_heads=2, n_layers=1, max_len=4)
    assert not check("7.1", copy.deepcopy(lm))
    assert "embeddings=True" in capsys.readouterr().out
    one_end = copy.deepcopy(lm)
    apply_mask(one_end.head, torch.ones(12, 8))          # without model=: one place only
    assert not check("7.1", one_end)
    assert "do not read one mask" in capsys.readouterr().out
    mask_layers(lm, 0.5, embeddings=True)
    assert check("7.1", lm)
    assert capsys.readouterr().out.startswith("✅ 7.1")
    assert not check("7.1", nn.Linear(2, 2))


def test_digits_resnet_has_batchnorm_and_residual_sums():
    torch.manual_seed(0)
    net = DigitsResNet(channels=6, n_blocks=2)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5
    assert count_params(net) == (9 * 6 + 2 * 6) + 2 * 2 * (9 * 36 + 2 * 6) + 6 * 10 + 10
    images = torch.randn(3, 1, 8, 8)
    assert torch.equal(net.eval()(images), net(images.flatten(1)))
    # the skip: with the block's second BatchNorm zeroed, a block is relu(x)
    block = net.blocks[1]
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.randn(2, 6, 8, 8)
    assert torch.equal(block(x), torch.relu(x))


def test_digits_resnet_trains_with_masks_held():
    torch.manual_seed(0)
    net = DigitsResNet(channels=8)
    mask_layers(net, 0.5)
    _train(net, steps=3)
    for param, mask in masked_parameters(net).items():
        assert (param.grad[mask == 0] == 0).all()


def count_params(model):
    return sum(p.numel() for p in model.parameters())
