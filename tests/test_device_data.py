"""Device choice, seeding (maskutils.device) and the digits loaders (maskutils.data)."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import maskutils.device as device_module
from maskutils import digits_loaders, get_device, seed_everything

ENV = "MASKUTILS_DEVICE"


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)
    return monkeypatch


# --- get_device -----------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available() or device_module._mps_available(),
                    reason="this machine has an accelerator")
def test_get_device_is_cpu_on_this_machine(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_then_mps_then_cpu(no_accelerator):
    assert get_device().type == "cpu"
    no_accelerator.setattr(device_module, "_mps_available", lambda: True)
    assert get_device().type == "mps"
    no_accelerator.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"


def test_env_cpu_overrides_an_available_gpu(no_accelerator):
    no_accelerator.setattr(torch.cuda, "is_available", lambda: True)
    no_accelerator.setenv(ENV, " cpu ")
    assert get_device() == torch.device("cpu")


def test_blank_env_is_ignored(no_accelerator):
    no_accelerator.setenv(ENV, "  ")
    assert get_device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["garbage", "gpu", "cuda:x"])
def test_env_garbage_is_a_value_error_naming_the_variable(no_accelerator, value):
    no_accelerator.setenv(ENV, value)
    with pytest.raises(ValueError, match=rf"MASKUTILS_DEVICE='{value}' is not a device torch knows"):
        get_device()


@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_env_cuda_without_cuda_is_a_value_error(no_accelerator, value):
    no_accelerator.setenv(ENV, value)
    with pytest.raises(ValueError, match="CUDA is not available"):
        get_device()


def test_env_mps_without_mps_is_a_value_error(no_accelerator):
    no_accelerator.setenv(ENV, "mps")
    with pytest.raises(ValueError, match="MPS is not available"):
        get_device()


# --- seed_everything ------------------------------------------------------------------------

def test_seed_everything_makes_torch_numpy_and_python_reproducible():
    assert seed_everything(7) == 7
    first = (torch.rand(5), np.random.rand(5), random.random())
    seed_everything(7)
    again = (torch.rand(5), np.random.rand(5), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]
    seed_everything(8)
    assert not torch.equal(torch.rand(5), first[0])


def test_seed_everything_accepts_numpy_integers():
    assert seed_everything(np.int64(3)) == 3
    assert type(seed_everything(np.uint32(3))) is int


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_a_value_error(seed):
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        seed_everything(seed)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_seed_that_is_not_an_int_is_a_type_error(seed):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(seed)


# --- digits_loaders -------------------------------------------------------------------------

def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                     for (x1, y1), (x2, y2) in zip(a, b))


def test_digits_batches_have_the_documented_shapes_and_dtypes():
    train, test = digits_loaders(batch_size=64)
    batches = _epoch(train)
    assert len(batches) == len(train) == 23  # ceil(1437 / 64)
    x, y = batches[0]
    assert x.shape == (64, 64) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert batches[-1][0].shape == (1437 - 22 * 64, 64)
    assert 0 <= int(torch.cat([b[1] for b in batches]).min()) and int(y.max()) <= 9


def test_digits_split_is_1437_train_and_360_test():
    train, test = digits_loaders()
    assert sum(len(y) for _, y in train) == 1437
    assert sum(len(y) for _, y in test) == 360


def test_one_training_epoch_visits_every_sample_once():
    train, _ = digits_loaders(batch_size=50)
    labels = torch.cat([y for _, y in train])
    assert torch.equal(torch.bincount(labels, minlength=10),
                       torch.bincount(train.dataset.tensors[1], minlength=10))
    rows = torch.cat([x for x, _ in train])
    assert torch.allclose(rows.sum(dim=0), train.dataset.tensors[0].sum(dim=0), atol=1e-3)


def test_digits_split_is_stratified():
    train, test = digits_loaders(seed=0)
    p_train = torch.bincount(torch.cat([y for _, y in train]), minlength=10) / 1437
    p_test = torch.bincount(torch.cat([y for _, y in test]), minlength=10) / 360
    # a plain random split differs by about 0.018 per class; stratified, by at most 1/360
    assert (p_train - p_test).abs().max() < 0.01


def test_features_are_standardized_with_training_statistics():
    train, test = digits_loaders()
    x = torch.cat([x for x, _ in train]).double()
    assert x.mean(dim=0).abs().max() < 1e-5
    std = x.std(dim=0, unbiased=False)
    constant = std < 1e-6  # always-blank pixels: all zero, not NaN
    assert constant.any() and (x[:, constant] == 0).all()
    torch.testing.assert_close(std[~constant], torch.ones_like(std[~constant]), atol=1e-4, rtol=0)
    assert not torch.cat([x for x, _ in test]).isnan().any()


def test_same_seed_gives_the_same_batches_epoch_after_epoch():
    a, _ = digits_loaders(batch_size=32, seed=3)
    b, _ = digits_loaders(batch_size=32, seed=3)
    first_a, first_b = _epoch(a), _epoch(b)
    assert _same(first_a, first_b)
    second_a = _epoch(a)
    assert _same(second_a, _epoch(b))
    assert not _same(first_a, second_a)  # the training loader reshuffles each epoch


@pytest.mark.parametrize("batch_size", [64, 256, 1000])
def test_batches_follow_torchs_random_and_batch_sampler_draw_for_draw(batch_size):
    # The loader indexes with tensors for speed; the order must stay what torch's own
    # RandomSampler + BatchSampler give from the same generator, epoch after epoch and
    # after reseeding (chapter 4 reseeds loader.sampler.sampler.generator).
    from torch.utils.data import BatchSampler, RandomSampler

    train, _ = digits_loaders(batch_size=batch_size, seed=5)
    x_all, y_all = train.dataset.tensors
    reference = BatchSampler(RandomSampler(train.dataset, generator=torch.Generator().manual_seed(5)),
                             batch_size, drop_last=False)
    for epoch in range(3):
        if epoch == 2:
            train.sampler.sampler.generator.manual_seed(11)
            reference.sampler.generator.manual_seed(11)
        expected = [(x_all[i], y_all[i]) for i in reference]
        assert len(train) == len(expected)
        assert _same(_epoch(train), expected)


def test_different_seeds_give_a_different_order():
    a, _ = digits_loaders(seed=0)
    b, _ = digits_loaders(seed=1)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))


def test_test_loader_order_is_fixed():
    _, test = digits_loaders(seed=0)
    _, again = digits_loaders(seed=0)
    first = _epoch(test)
    assert len(first) == 1 and first[0][0].shape == (360, 64)
    assert _same(first, _epoch(test))
    assert _same(first, _epoch(again))


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu"), "meta"])
def test_batches_live_on_the_requested_device(device):
    train, test = digits_loaders(device=device)
    expected = torch.device("cpu" if device is None else device)
    for loader in (train, test):
        x, y = next(iter(loader))
        assert x.device == expected and y.device == expected


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "64"])
def test_batch_size_must_be_a_positive_int(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
        digits_loaders(batch_size=batch_size)


@pytest.mark.parametrize("seed", [-1, 0.5, "0"])
def test_loader_seed_must_be_a_non_negative_int(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        digits_loaders(seed=seed)


def test_editing_one_loaders_labels_in_place_does_not_change_a_later_call():
    # A chapter that adds label noise in place must not corrupt the data of every later call.
    train, _ = digits_loaders(seed=0)
    labels = train.dataset.tensors[1]
    saved = labels.clone()
    try:
        labels.fill_(0)
        again, _ = digits_loaders(seed=0)
        assert torch.equal(again.dataset.tensors[1], saved)
    finally:
        labels.copy_(saved)  # undo, in case the loaders share memory with a cache


# --- the validation split ----------------------------------------------------------------------

def test_validation_split_keeps_the_test_set_and_holds_out_part_of_training():
    train2, test2 = digits_loaders(seed=0)
    train3, val3, test3 = digits_loaders(seed=0, validation=True)
    assert len(train3.dataset) + len(val3.dataset) == len(train2.dataset)
    assert len(val3.dataset) == math.ceil(0.2 * len(train2.dataset))  # sklearn rounds up
    # the same 360 test images in the same order; only the standardization differs,
    # so each pixel column is an exact affine function of the other
    assert torch.equal(test2.dataset.tensors[1], test3.dataset.tensors[1])
    a, b = test2.dataset.tensors[0].double(), test3.dataset.tensors[0].double()
    varying = a.std(dim=0) > 0
    scale = b[:, varying].std(dim=0) / a[:, varying].std(dim=0)
    shift = b[:, varying].mean(dim=0) - scale * a[:, varying].mean(dim=0)
    assert torch.allclose(a[:, varying] * scale + shift, b[:, varying], atol=1e-5)


def test_validation_split_is_stratified_disjoint_and_standardized_on_training_only():
    train, val, _ = digits_loaders(seed=0, validation=True)
    x_tr, y_tr = train.dataset.tensors
    x_val, y_val = val.dataset.tensors
    assert torch.bincount(y_val, minlength=10).min() >= 25   # every class, about 29 each
    assert torch.allclose(x_tr.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert x_val.mean(dim=0).abs().max() > 1e-3   # not re-standardized on itself
    rows = {tuple(r.tolist()) for r in x_tr}
    assert not any(tuple(r.tolist()) in rows for r in x_val)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_validation_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="validation must be True or False"):
        digits_loaders(validation=bad)


# --- the character-level text ---------------------------------------------------------------------

def test_char_loaders_shift_targets_and_keep_the_slices_apart():
    from maskutils import char_corpus, char_loaders

    text, vocab = char_corpus()
    train, val, test = char_loaders(seq_len=32, batch_size=8, seed=0)
    x, y = next(iter(train))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(x.max()) < len(vocab)
    vx, vy = next(iter(val))
    decoded = "".join(vocab[i] for i in vx[0].tolist())
    start = round(0.8 * len(text))
    assert text[start:start + 32] == decoded, "validation starts right after the train slice"
    n_val = sum(b[0].numel() for b in val)
    n_test = sum(b[0].numel() for b in test)
    assert abs(n_val - 0.1 * len(text)) < 64 and abs(n_test - 0.1 * len(text)) < 64


def test_char_loaders_reshuffle_each_epoch_and_repeat_with_the_seed():
    from maskutils import char_loaders

    a = char_loaders(seq_len=16, batch_size=4, seed=1)[0]
    b = char_loaders(seq_len=16, batch_size=4, seed=1)[0]
    first, again = next(iter(a)), next(iter(b))
    assert torch.equal(first[0], again[0])
    assert not torch.equal(next(iter(a))[0], first[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"seq_len": 0}, "seq_len"), ({"batch_size": 0}, "batch_size"),
    ({"fractions": (0.5, 0.5)}, "fractions"), ({"fractions": (0.9, 0.2, -0.1)}, "fractions"),
])
def test_char_loaders_reject_bad_input(kwargs, match):
    from maskutils import char_loaders

    with pytest.raises(ValueError, match=match):
        char_loaders(**kwargs)


def test_reshuffle_makes_the_batch_order_depend_on_the_seed_alone():
    from maskutils import reshuffle

    train, _ = digits_loaders(batch_size=32)
    order = lambda: torch.cat([y for _, y in train])  # noqa: E731
    first = order()
    second = order()                        # the next epoch: another order
    assert not torch.equal(first, second)
    assert reshuffle(train, 0) is train
    assert torch.equal(order(), first)      # seed 0 again: the first epoch's order
    reshuffle(train, 1)
    assert not torch.equal(order(), first)
    with pytest.raises(TypeError, match="digits_loaders"):
        reshuffle([1, 2, 3], 0)
    with pytest.raises(ValueError, match="seed"):
        reshuffle(train, -1)
