"""maskutils.bench: structure of the results, the table, the JSON and the command line.

These tests never assert a timing threshold: they check that every variant and batch size is
measured, that the ratios are sane numbers, that the variants really enforce their masks
(so the benchmark times what it says), and that bad arguments get clear errors.
"""
from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskutils import bench
from maskutils.bench import (VARIANTS, format_table, main, make_mlp, matmul_sweep,
                             run_benchmark, time_interleaved)

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(width=8, layers=2, rounds=2, steps_per_round=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_result():
    return run_benchmark(batch_sizes=(2, 5), **TINY)


# ---------------------------------------------------------------- run_benchmark
def test_every_variant_and_batch_size_is_measured(tiny_result):
    pairs = [(r["batch_size"], r["variant"]) for r in tiny_result["rows"]]
    assert pairs == [(b, v) for b in (2, 5) for v in VARIANTS]


def test_ratios_are_positive_and_dense_is_the_baseline(tiny_result):
    for row in tiny_result["rows"]:
        assert row["median_s"] > 0 and row["ratio"] > 0
        assert row["q1_s"] <= row["median_s"] <= row["q3_s"]
        assert len(row["times_s"]) == TINY["rounds"]
        if row["variant"] == "dense":
            assert row["ratio"] == 1.0
        dense = next(r for r in tiny_result["rows"]
                     if r["batch_size"] == row["batch_size"] and r["variant"] == "dense")
        assert row["ratio"] == pytest.approx(row["median_s"] / dense["median_s"])


def test_result_names_hardware_and_configuration(tiny_result):
    assert "torch" in tiny_result["banner"] and "cpu" in tiny_result["banner"]
    cfg = tiny_result["config"]
    assert cfg["batch_sizes"] == [2, 5] and cfg["width"] == 8 and cfg["layers"] == 2
    assert cfg["variants"] == list(VARIANTS) and cfg["sparsity"] == 0.9


def test_a_subset_of_variants_always_includes_dense():
    result = run_benchmark(batch_sizes=3, variants=["prune"], **TINY)
    assert [r["variant"] for r in result["rows"]] == ["dense", "prune"]


def test_thread_count_is_restored():
    before = torch.get_num_threads()
    result = run_benchmark(batch_sizes=(2,), threads=2, **TINY)
    assert torch.get_num_threads() == before
    assert result["config"]["threads"] == 2
    assert "(2 threads)" in result["banner"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "dense"])
def test_each_variant_keeps_its_masked_weights_at_zero(variant):
    """The benchmark times real masking: after training steps the masked entries are zero."""
    base = make_mlp(6, 2)
    masks = [(torch.rand(6, 6, generator=torch.Generator().manual_seed(i)) > 0.5).float()
             for i in range(2)]
    model, optimizer, handles = bench._prepare(variant, base, masks, lr=0.1)
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    for _ in range(3):
        bench._train_step(model, optimizer, x, y)
    for layer, mask in zip(bench._linears(model), masks):
        assert (layer.weight.detach()[mask == 0] == 0).all()
        assert (layer.weight.detach()[mask == 1] != 0).all()
    for handle in handles:
        handle.remove()


def test_variants_start_from_identical_copies():
    base = make_mlp(6, 2)
    masks = [torch.ones(6, 6) for _ in range(2)]
    x = torch.randn(3, 6)
    outputs = [bench._prepare(v, base, masks, lr=0.1)[0](x) for v in VARIANTS]
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_sizes": ()}, "batch_sizes"),
    ({"batch_sizes": (0,)}, "batch size"),
    ({"batch_sizes": (4, 4)}, "repeats"),
    ({"batch_sizes": "abc"}, "batch size"),
    ({"width": 0}, "width"),
    ({"layers": 1.5}, "layers"),
    ({"rounds": 0}, "rounds"),
    ({"steps_per_round": -1}, "steps_per_round"),
    ({"threads": 0}, "threads"),
    ({"sparsity": 1.5}, "sparsity"),
    ({"sparsity": 1.0}, "sparsity"),
    ({"device": "nonsense"}, "device"),
    ({"variants": ["dense", "fast"]}, "variants"),
    ({"variants": []}, "variants must be a non-empty selection"),
])
def test_bad_arguments_are_named(kwargs, words):
    args = {"batch_sizes": (2,), **TINY, **kwargs}
    with pytest.raises((ValueError, TypeError), match=words):
        run_benchmark(**args)


def test_cuda_that_is_not_there_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_benchmark(batch_sizes=(2,), **{**TINY, "device": "cuda"})


# ---------------------------------------------------------------- format_table
def test_table_has_every_variant_and_batch_size(tiny_result):
    table = format_table(tiny_result)
    assert tiny_result["banner"] in table
    for batch in (2, 5):
        assert f"batch size {batch}" in table
    for variant in VARIANTS:
        lines = [ln for ln in table.splitlines() if ln.startswith(variant + " ")]
        assert len(lines) == 2, variant
        for line in lines:
            ratio = float(line.split()[-1])
            assert ratio > 0
    dense_ratios = re.findall(r"^dense\s.*\s(\S+)$", table, flags=re.M)
    assert dense_ratios == ["1.000", "1.000"]


def test_table_refuses_something_else():
    with pytest.raises(ValueError, match="run_benchmark"):
        format_table({"nothing": 1})


# ---------------------------------------------------------------- command line
TINY_ARGS = ["--batch-sizes", "2", "3", "--width", "8", "--layers", "1", "--rounds", "1",
             "--steps-per-round", "1", "--device", "cpu"]


def test_main_prints_the_table(capsys):
    assert main(TINY_ARGS) == 0
    out = capsys.readouterr().out
    assert "batch size 2" in out and "batch size 3" in out
    assert all(v in out for v in VARIANTS)


def test_main_json_parses(capsys):
    assert main([*TINY_ARGS, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"banner", "config", "rows"} <= set(data)
    assert {(r["batch_size"], r["variant"]) for r in data["rows"]} == {
        (b, v) for b in (2, 3) for v in VARIANTS}
    assert all(r["ratio"] > 0 for r in data["rows"])


@pytest.mark.parametrize("argv, words", [
    (["--width", "0"], "width must be a positive int"),
    (["--batch-sizes", "0"], "batch size must be a positive int"),
    (["--sparsity", "1.5"], "sparsity must be in"),
    (["--threads", "0"], "threads must be a positive int"),
    (["--variants", "fast"], "variants must be"),
    (["--device", "toaster"], "not a device"),
    (["--width", "wide"], "invalid int value"),
])
def test_main_bad_arguments_exit_2_with_a_message(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY_ARGS, *argv])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_module_runs_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "maskutils.bench", *TINY_ARGS, "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["rows"]) == 2 * len(VARIANTS)


def test_module_reports_bad_arguments_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "maskutils.bench", "--layers", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "layers must be a positive int" in done.stderr


# ---------------------------------------------------------------- time_interleaved
def test_interleaved_rounds_rotate_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_interleaved(fns, rounds=3, calls_per_round=2, warmup_rounds=1)
    assert all(len(t) == 3 and min(t) >= 0 for t in times.values())
    assert len(calls) == 4 * 3 * 2
    firsts = [calls[i * 6] for i in range(4)]  # first call of each round
    assert firsts == ["a", "b", "c", "a"]


@pytest.mark.parametrize("kwargs, error", [
    ({"calls": {}}, ValueError),
    ({"calls": {"x": 3}}, TypeError),
    ({"rounds": 0}, ValueError),
    ({"calls_per_round": 0}, ValueError),
    ({"warmup_rounds": -1}, ValueError),
])
def test_interleaved_bad_arguments(kwargs, error):
    args = {"calls": {"f": lambda: None}, **kwargs}
    with pytest.raises(error):
        time_interleaved(**args)


# ---------------------------------------------------------------- matmul_sweep and the model
def test_matmul_sweep_structure_and_agreement():
    levels = (0.5, 0.9, 0.99)
    r = matmul_sweep(levels, size=64, batch=3, rounds=2, calls_per_round=1)
    assert r["sparsity"] == list(levels)
    for key in ("dense_s", "csr_s", "rows_s"):
        assert len(r[key]) == len(levels) and all(t > 0 for t in r[key])
    assert 0 <= r["max_error"] < 1e-5


@pytest.mark.parametrize("kwargs, words", [
    ({"sparsities": ()}, "empty"),
    ({"sparsities": (0.5, 1.0)}, "below 1"),
    ({"sparsities": (-0.1,)}, "sparsity"),
    ({"size": 0}, "size"),
    ({"batch": 0}, "batch"),
])
def test_matmul_sweep_bad_arguments(kwargs, words):
    args = {"sparsities": (0.5,), "size": 8, "batch": 2, "rounds": 1, **kwargs}
    with pytest.raises(ValueError, match=words):
        matmul_sweep(**args)


def test_make_mlp_shape():
    model = make_mlp(16, 3)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and all(m.weight.shape == (16, 16) for m in linears)
    assert len(model) == 5  # ReLU between, not after the last layer
    with pytest.raises(ValueError, match="layers"):
        make_mlp(16, 0)


def test_docstring_examples_run():
    failures, tried = doctest.testmod(bench, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


# ---------------------------------------------------------------- the two plots chapter 5 adds
def test_speed_curves_plots_milliseconds_on_a_log_axis():
    from maskutils.plot import speed_curves

    fig = speed_curves([0.5, 0.9], {"dense": [2e-3, 2e-3], "csr": [4e-3, 5e-4]},
                       "sparsity", title="t", mark=(0.7, "crossover"), percent_x=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["dense"].get_ydata()) == pytest.approx([2.0, 2.0])  # milliseconds
    assert "crossover" in lines
    with pytest.raises(ValueError, match="values"):
        speed_curves([1, 2], {"a": [1e-3]}, "x")
    with pytest.raises(ValueError, match="positive"):
        speed_curves([1], {"a": [0.0]}, "x")
    with pytest.raises(ValueError, match="non-empty"):
        speed_curves([1], {}, "x")


def test_grouped_bars_draws_one_bar_per_label_and_group():
    from maskutils.plot import grouped_bars

    fig = grouped_bars({"b32": {"dense": 1.0, "m": 1.2}, "b256": {"dense": 1.0, "m": 1.05}},
                       "ratio", reference=1.0)
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == pytest.approx([1.0, 1.0, 1.05, 1.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b32", "b256"]
    with pytest.raises(ValueError, match="non-empty"):
        grouped_bars({"b": {}}, "ratio")


# ---------------------------------------------------------------- --inference and its helpers
from torch import nn  # noqa: E402

from maskutils.bench import (FORMATS, INFERENCE_VARIANTS,  # noqa: E402
                             crossover_sparsity, format_inference_table, inference_times,
                             run_inference_benchmark)

TINY_INFERENCE = dict(batch_sizes=(1, 3), hidden=(16, 16), epochs=0, finetune_epochs=0,
                      rounds=2, device="cpu", sparsity=0.9, units_kept=0.25)


@pytest.fixture(scope="module")
def tiny_inference():
    return run_inference_benchmark(**TINY_INFERENCE)


def test_inference_rows_cover_every_variant_and_batch(tiny_inference):
    rows = tiny_inference["rows"]
    assert [r["variant"] for r in rows] == list(INFERENCE_VARIANTS)
    for row in rows:
        assert sorted(row["ms"]) == [1, 3] and all(v > 0 for v in row["ms"].values())
        for b in (1, 3):
            dense = rows[0]["ms"][b]
            assert row["ratio"][b] == pytest.approx(row["ms"][b] / dense)
        assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
    assert all(r == 1.0 for r in rows[0]["ratio"].values())


def test_inference_models_are_what_the_rows_say(tiny_inference):
    rows = {r["variant"]: r for r in tiny_inference["rows"]}
    dense_weights = 64 * 16 + 16 * 16 + 16 * 10
    # the masked checkpoint holds the dense weights and a mask as large (tiny: + pickle)
    assert rows["masked"]["bytes"] > 1.5 * rows["dense"]["bytes"]
    assert rows["csr"]["bytes"] < rows["dense"]["bytes"]
    assert rows["csr"]["test_acc"] == rows["masked"]["test_acc"]
    kept_weights = [w for w in [rows["masked"]["nonzero_weights"]]]
    assert kept_weights[0] <= round(0.1 * dense_weights) + 16 + 16 + 10  # + the biases
    assert tiny_inference["config"]["shrunk_hidden"] == [4, 4]
    assert rows["shrunk"]["params"] == 64 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10


def test_inference_storage_has_every_format(tiny_inference):
    storage = tiny_inference["storage"]
    assert list(storage) == list(FORMATS)
    assert storage["bitmask"]["bytes"] < storage["dense"]["bytes"]
    assert all(v["zip_bytes"] > 0 for v in storage.values())


def test_inference_table_and_json(tiny_inference, capsys):
    table = format_inference_table(tiny_inference)
    for name in INFERENCE_VARIANTS + FORMATS:
        assert any(line.startswith(name + " ") for line in table.splitlines()), name
    again = json.loads(json.dumps(tiny_inference))  # batch keys become strings
    assert format_inference_table(again) == table
    with pytest.raises(ValueError, match="run_inference_benchmark"):
        format_inference_table({"rows": []})


def test_main_inference_prints_the_table_and_the_json(capsys):
    argv = ["--inference", "--batch-sizes", "2", "--hidden", "8", "8", "--epochs", "0",
            "--finetune-epochs", "0", "--rounds", "1", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "shrunk" in out and "ms @2" in out and "64 -> 8 -> 8 -> 10" in out
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in data["rows"]] == list(INFERENCE_VARIANTS)
    assert data["config"]["sparsity"] == 0.95 and data["config"]["units_kept"] == 0.25


@pytest.mark.parametrize("kwargs, words", [
    ({"units_kept": 0.0}, "units_kept"),
    ({"units_kept": 1.5}, "units_kept"),
    ({"sparsity": 1.0}, "sparsity"),
    ({"hidden": ()}, "hidden"),
    ({"hidden": (0,)}, "hidden"),
    ({"epochs": -1}, "epochs"),
    ({"finetune_epochs": 1.5}, "finetune_epochs"),
    ({"batch_sizes": ()}, "batch_sizes"),
])
def test_inference_bad_arguments_are_named(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        run_inference_benchmark(**{**TINY_INFERENCE, **kwargs})







def test_inference_times_restores_modes_and_rejects_bad_input():
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5)).train()
    times = inference_times({"m": model}, batch_sizes=(2,), rounds=1)
    assert model.training and times["m"][2] > 0
    with pytest.raises(ValueError, match="models"):
        inference_times({}, batch_sizes=(2,))
    with pytest.raises(ValueError, match="n_in"):
        inference_times({"r": nn.ReLU()}, batch_sizes=(2,))


@pytest.mark.parametrize("xs, dense, sparse, expected", [
    ([0.5, 0.9], [1.0, 1.0], [2.0, 0.5], 0.7),
    ([0.5, 0.9], [1.0, 1.0], [0.9, 0.5], 0.5),
    ([0.5, 0.9], [1.0, 1.0], [2.0, 1.5], None),
])
def test_crossover_sparsity(xs, dense, sparse, expected):
    assert crossover_sparsity(xs, dense, sparse) == expected
    with pytest.raises(ValueError, match="one length"):
        crossover_sparsity([0.5], [1.0, 2.0], [1.0])


def test_the_storage_helpers_still_import_from_bench():
    """Chapter 6 and older code import them from maskutils.bench; they live in storage."""
    import maskutils.bench as bench
    import maskutils.storage as storage

    for name in ("FORMATS", "CSRLinear", "csr_model", "plain_state", "storage_bytes",
                 "storage_sizes"):
        assert getattr(bench, name) is getattr(storage, name), name


# ---------------------------------------------------------------- --structured
from maskutils.bench import (STRUCTURED_MODELS, format_structured_table,  # noqa: E402
                             run_structured_benchmark)

TINY_STRUCTURED = dict(batch_sizes=(1, 3), channels=8, llama_width=16, seq_len=4, rounds=1,
                       device="cpu")


@pytest.fixture(scope="module")
def tiny_structured():
    pytest.importorskip("transformers")
    return run_structured_benchmark(**TINY_STRUCTURED)


def test_structured_rows_pair_dense_and_shrunk_for_every_model(tiny_structured):
    rows = tiny_structured["rows"]
    assert [(r["model"], r["variant"]) for r in rows] == [
        (m, v) for m in STRUCTURED_MODELS for v in ("dense", "shrunk")]
    for dense, shrunk in zip(rows[::2], rows[1::2]):
        assert dense["ratio"]["params"] == 1.0 and dense["ratio"][3] == 1.0
        assert shrunk["ratio"]["params"] == pytest.approx(shrunk["params"] / dense["params"])
        assert shrunk["ratio"][1] == pytest.approx(shrunk["ms"][1] / dense["ms"][1])
        assert shrunk["params"] < dense["params"] and shrunk["macs"] < dense["macs"]


def test_structured_counts_are_the_shrunk_models(tiny_structured):
    rows = {(r["model"], r["variant"]): r for r in tiny_structured["rows"]}
    c = 4  # 8 channels, half of every group
    assert rows["resnet", "shrunk"]["params"] == 11 * c + 2 * (18 * c * c + 4 * c) + 10 * c + 10
    llama_ffn = 4 * 3 * 16 * 64  # 4 layers of gate, up and down at 16 x 64
    assert rows["llama", "dense"]["params"] - rows["llama", "shrunk"]["params"] == llama_ffn // 2


def test_structured_table_and_json(tiny_structured):
    table = format_structured_table(tiny_structured)
    assert "residual CNN" in table and "LLaMA" in table and "ms @3" in table
    assert "Warning" not in table
    again = json.loads(json.dumps(tiny_structured))
    assert format_structured_table(again) == table
    with pytest.raises(ValueError, match="run_structured_benchmark"):
        format_structured_table({"rows": [], "config": {}})


def test_main_structured_prints_the_table_and_nothing_else(capsys):
    argv = ["--structured", "--models", "resnet", "--channels", "8", "--batch-sizes", "2",
            "--rounds", "1", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("device:") and "shrunk" in out
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["sparsity"] == 0.5 and data["config"]["models"] == ["resnet"]


@pytest.mark.parametrize("kwargs, words", [
    ({"models": ("vgg",)}, "models"), ({"models": ()}, "models"),
    ({"sparsity": 1.0}, "sparsity"), ({"channels": 0}, "channels"),
    ({"llama_width": 20}, "llama_width"), ({"seq_len": 0}, "seq_len"),
    ({"threads": 0}, "threads"), ({"models": "vgg"}, "selection of"),
])
def test_structured_bad_arguments_are_named(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=words):
        run_structured_benchmark(**{**TINY_STRUCTURED, **kwargs})
