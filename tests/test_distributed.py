"""maskutils.distributed on 2 local gloo processes: launch, broadcast_masks, masks_agree, and
the refusal to mask a DDP wrapper. Few launches, each checking several things: a launch costs
the start-up of its processes."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from maskutils import (apply_mask, get_mask, mask_layers, masked_parameters, random_mask,
                       remove_mask)
from maskutils.distributed import (RankError, _counted_broadcasts, backend_for, broadcast_masks,
                                   launch, masks_agree, shrink_masks, train_steps, wrap_ddp)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _checks(rank: int, world_size: int) -> dict:
    """Run on every rank; returns what the parent asserts (workers must be importable)."""
    import torch.distributed as dist

    from conftest import assert_unchanged, snapshot

    out = {"rank": rank, "backend": dist.get_backend()}
    model = _model()
    torch.manual_seed(100 + rank)  # a different random mask on every rank
    for layer in (model[0], model[2]):
        apply_mask(layer, random_mask(layer.weight, 0.5))
    out["agree_before"] = masks_agree(model)
    before = snapshot(model)
    try:
        broadcast_masks(model, src=world_size)
    except ValueError as error:
        out["bad_src"] = str(error)
    assert_unchanged(model, before)
    broadcast_masks(model, src=1)
    out["agree_after"] = masks_agree(model)
    out["mask"] = get_mask(model[0]).clone()

    lopsided = _model()  # rank 1 masks one layer fewer
    for layer in (lopsided[0], lopsided[2])[: 2 - rank]:
        apply_mask(layer, torch.ones_like(layer.weight))
    out["agree_lopsided"] = masks_agree(lopsided)
    before = snapshot(lopsided)
    try:
        broadcast_masks(lopsided)
    except ValueError as error:
        out["lopsided"] = str(error)
    assert_unchanged(lopsided, before)

    # Masks made before wrapping: DDP's first broadcast makes them agree, training keeps
    # the masked weights at zero and the ranks' weights equal; shrinking in place is safe.
    fresh = _model()
    torch.manual_seed(200 + rank)
    for layer in (fresh[0], fresh[2]):
        apply_mask(layer, random_mask(layer.weight, 0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = wrap_ddp(fresh)
        apart = wrap_ddp(_masked_per_rank(rank), sync_buffers=False, sync_buffers_at_init=False)
    out["warnings"] = [str(w.message) for w in caught]
    out["agree_wrapped"], out["agree_unsynced"] = masks_agree(ddp), masks_agree(apart)
    batch = (torch.randn(8, 6, generator=torch.Generator().manual_seed(1)),
             torch.arange(8) % 3)
    with _counted_broadcasts() as synced:  # DDP's default: the masks before every forward
        train_steps(ddp, [batch] * 3, torch.optim.SGD(ddp.parameters(), lr=0.5), rank,
                    world_size)
    with _counted_broadcasts() as unsynced:
        train_steps(apart, [batch], torch.optim.SGD(apart.parameters(), lr=0.5), rank,
                    world_size)
    out["broadcast"] = {"synced": synced["bytes"], "unsynced": unsynced["bytes"],
                        "masks": sum(m.numel() * m.element_size()
                                     for m in masked_parameters(fresh).values())}
    shrink_masks(ddp, 0.8)
    train_steps(ddp, [batch] * 2, torch.optim.SGD(ddp.parameters(), lr=0.5), rank, world_size)
    out["agree_shrunk"] = masks_agree(ddp)
    out["weights"] = [layer.weight.detach().clone() for layer in (fresh[0], fresh[2])]
    out["masks"] = [get_mask(layer).clone() for layer in (fresh[0], fresh[2])]

    refusals = {}
    for label, call in {"apply_mask": lambda: apply_mask(ddp, torch.ones(1)),
                        "mask_layers": lambda: mask_layers(ddp, 0.5),
                        "remove_mask": lambda: remove_mask(ddp)}.items():
        before = snapshot(fresh)
        try:
            call()
        except ValueError as error:
            refusals[label] = str(error)
        assert_unchanged(fresh, before)
    out["refusals"] = refusals
    return out


def _masked_per_rank(rank: int) -> nn.Module:
    model = _model()
    torch.manual_seed(300 + rank)
    apply_mask(model[0], random_mask(model[0].weight, 0.5))
    return model


def _fails_on_rank_one(rank: int, world_size: int, word: str):
    import torch.distributed as dist

    if rank == 1:
        raise KeyError(f"rank one says {word}")
    dist.barrier()  # rank 0 waits for a rank that never comes: launch must stop it
    return "unreachable"


def _echo(rank: int, world_size: int, value):
    return {"rank": rank, "world_size": world_size, "value": value}


@pytest.fixture(scope="module")
def checked():
    return launch(_checks, world_size=2)


def test_launch_returns_each_rank_result_in_rank_order(checked):
    assert [r["rank"] for r in checked] == [0, 1]
    assert {r["backend"] for r in checked} == {backend_for(2)}


def test_per_rank_masks_disagree_until_broadcast(checked):
    assert [r["agree_before"] for r in checked] == [False, False]
    assert [r["agree_after"] for r in checked] == [True, True]
    assert torch.equal(checked[0]["mask"], checked[1]["mask"])


def test_broadcast_masks_refuses_bad_input_and_changes_nothing(checked):
    for r in checked:
        assert "src must be a rank in [0, 2)" in r["bad_src"]
        assert r["agree_lopsided"] is False
        assert "not masked on the same layers" in r["lopsided"]


def test_masks_made_before_wrapping_agree_and_stay_zero(checked):
    for r in checked:
        assert r["agree_wrapped"] and r["agree_shrunk"]
        assert r["agree_unsynced"] is False  # no buffer sync at all: the masks stay apart
        assert r["warnings"] == []          # wrap_ddp lets no FutureWarning through
    for w0, w1, mask in zip(checked[0]["weights"], checked[1]["weights"], checked[0]["masks"]):
        assert torch.equal(w0, w1)
        assert (w0[mask == 0] == 0).all() and (mask == 0).float().mean() >= 0.79
    assert all(torch.equal(a, b) for a, b in zip(checked[0]["masks"], checked[1]["masks"]))


def test_the_default_buffer_sync_sends_every_mask_before_every_forward(checked):
    for r in checked:  # 3 steps with the sync on, 1 with it off
        assert r["broadcast"]["masks"] == (5 * 6 + 3 * 5) * 4  # float32, as large as weights
        assert r["broadcast"]["synced"] == 3 * r["broadcast"]["masks"]
        assert r["broadcast"]["unsynced"] == 0


def test_masking_a_ddp_wrapper_is_refused_and_changes_nothing(checked):
    for r in checked:
        assert sorted(r["refusals"]) == ["apply_mask", "mask_layers", "remove_mask"]
        for message in r["refusals"].values():
            assert "mask before wrapping" in message


def test_a_failing_rank_raises_its_error_in_the_caller():
    with pytest.raises(KeyError, match="rank one says no") as info:
        launch(_fails_on_rank_one, world_size=2, args=("no",))
    cause = info.value.__cause__
    assert isinstance(cause, RankError) and cause.rank == 1 and cause.type_name == "KeyError"
    assert "rank one says no" in cause.remote_traceback
    assert launch(_echo, world_size=1, args=([1, 2],)) == [
        {"rank": 0, "world_size": 1, "value": [1, 2]}]


def _nested():
    def inner(rank, world_size):
        return rank
    return inner


@pytest.mark.parametrize("fn, match", [
    (lambda rank, world_size: rank, "cannot be imported"),
    (_nested(), "cannot be imported"),
])
def test_launch_refuses_functions_the_processes_cannot_import(fn, match):
    with pytest.raises(ValueError, match=match):
        launch(fn)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"world_size": 0}, ValueError, "world_size must be a positive int"),
    ({"world_size": True}, ValueError, "world_size must be a positive int"),
    ({"args": 3}, TypeError, "args must be a tuple"),
    ({"start_method": "thread"}, ValueError, "start_method must be one of"),
    ({"args": (lambda: 0,)}, TypeError, "picklable"),
])
def test_launch_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        launch(_echo, **kwargs)


def test_launch_refuses_what_is_not_a_function():
    with pytest.raises(TypeError, match="fn must be a function"):
        launch("train")


def test_collectives_need_a_process_group(left_alone):
    model = _model()
    apply_mask(model[0], torch.ones(5, 6))
    for call in (masks_agree, broadcast_masks):
        with left_alone(model), pytest.raises(RuntimeError, match="process group"):
            call(model)


def test_the_backend_is_gloo_without_a_gpu_per_rank():
    if not torch.cuda.is_available():
        assert backend_for(2) == "gloo"
    assert backend_for(10**6) == "gloo"
    with pytest.raises(ValueError, match="world_size"):
        backend_for(0)
