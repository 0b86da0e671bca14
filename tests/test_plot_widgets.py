"""Figures (maskutils.plot) and the slider with its static twin (maskutils.widgets)."""
from __future__ import annotations

import base64
import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from maskutils.plot import curves, heatmap, heatmaps, layer_curves
from maskutils.parallel import worker_count
from maskutils.widgets import Slider

MASK = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])


def _colours(image):
    rgba = image.to_rgba(image.get_array())
    return {tuple(px) for px in rgba.reshape(-1, 4).tolist()}


# --- heatmaps -------------------------------------------------------------------------------

def test_heatmaps_draws_one_axes_per_panel_plus_a_colorbar():
    panels = {"random": MASK, "magnitude": 1 - MASK, "N:M": MASK.flip(0)}
    fig = heatmaps(panels, kind="mask", suptitle="three masks")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(panels) + 1
    assert [ax.get_title() for ax in fig.axes[:3]] == list(panels)
    assert all(len(ax.images) == 1 for ax in fig.axes[:3])
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()


def test_mask_panels_use_exactly_two_colours():
    fig = heatmaps({"a": MASK, "b": torch.ones(3, 4)}, kind="mask")
    image = fig.axes[0].images[0]
    assert image.cmap.N == 2
    assert len(_colours(image)) == 2
    assert len(_colours(fig.axes[1].images[0])) == 1
    colorbar = fig.axes[-1]
    assert [t.get_text() for t in colorbar.get_yticklabels()] == ["removed", "kept"]


def test_signed_panels_share_one_symmetric_scale():
    small, large = torch.randn(3, 4) * 0.1, torch.randn(3, 4) * 5.0
    top = float(max(small.abs().max(), large.abs().max()))
    fig = heatmaps({"small": small, "large": large}, kind="weight")
    for ax in fig.axes[:2]:
        low, high = ax.images[0].get_clim()
        assert high == pytest.approx(top) and low == pytest.approx(-top)
    own = heatmaps({"small": small, "large": large}, kind="gradient", shared_scale=False)
    assert own.axes[0].images[0].get_clim()[1] == pytest.approx(float(small.abs().max()))


def test_conv_kernels_become_one_row_per_output_channel():
    fig = heatmaps({"conv": torch.ones(6, 3, 2, 2)})
    assert fig.axes[0].images[0].get_array().shape == (6, 12)


def test_heatmaps_in_a_grid_turns_unused_cells_off():
    fig = heatmaps({str(i): MASK for i in range(3)}, ncols=2)
    panels = fig.axes[:4]
    assert [ax.axison for ax in panels] == [True, True, True, False]


@pytest.mark.parametrize("draw", [lambda k: heatmaps({"a": MASK}, kind=k), lambda k: heatmap(MASK, kind=k)],
                         ids=["heatmaps", "heatmap"])
def test_unknown_kind_is_a_value_error(draw):
    with pytest.raises(ValueError, match=r"must be one of \['gradient', 'mask', 'weight'\], got 'masks'"):
        draw("masks")
    assert plt.get_fignums() == []  # nothing half-drawn left behind


def test_mixed_kinds_give_each_panel_its_own_colorbar():
    fig = heatmaps({"mask": MASK, "weight": torch.randn(3, 4)}, kind={"mask": "mask", "weight": "weight"})
    assert len(fig.axes) == 4
    assert len(_colours(fig.axes[0].images[0])) == 2
    assert fig.axes[1].images[0].cmap.name == "RdBu_r"


@pytest.mark.parametrize("kinds", [{"a": "mask", "b": "wieght"}, {"a": "mask"}])
def test_mixed_kinds_name_the_panel_with_a_bad_or_missing_kind(kinds):
    with pytest.raises(ValueError, match=r"kind of panel 'b' must be one of"):
        heatmaps({"a": MASK, "b": MASK}, kind=kinds)


@pytest.mark.parametrize("tensors", [{}, [MASK]])
def test_heatmaps_needs_a_non_empty_dict(tensors):
    with pytest.raises(ValueError, match="non-empty dict"):
        heatmaps(tensors)


def test_heatmap_draws_on_a_given_axes():
    fig, ax = plt.subplots()
    assert heatmap(MASK, kind="mask", title="one", ax=ax) is fig
    assert ax.get_title() == "one" and len(ax.images) == 1


def test_curves_plots_one_line_per_label_and_checks_lengths():
    fig = curves([0.0, 0.5, 0.9], {"random": [0.9, 0.8, 0.5], "magnitude": [0.9, 0.9, 0.8]},
                 xlabel="sparsity", ylabel="accuracy", spread={"random": ([0.8] * 3, [0.95] * 3)})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["random", "magnitude"]
    assert len(ax.collections) == 1  # the shaded band
    with pytest.raises(ValueError, match="'bad' has 2 values but x has 3"):
        curves([1, 2, 3], {"bad": [1, 2]}, xlabel="x", ylabel="y")


def _group_lines(ax):
    return sorted(float(line.get_xdata()[0]) for line in ax.lines)


def test_column_group_draws_a_line_between_groups_of_columns_in_every_panel():
    nm = torch.tensor([[1.0, 1.0, 0.0, 0.0] * 3, [0.0, 1.0, 0.0, 1.0] * 3])  # 2 x 12
    fig = heatmaps({"2:4": nm, "weights": torch.randn(2, 12)},
                   kind={"2:4": "mask", "weights": "weight"}, column_group=4)
    for ax in fig.axes[:2]:  # the two panels (the colour bars come after them)
        assert _group_lines(ax) == [3.5, 7.5]  # between columns 3|4 and 7|8, not at the edges
    assert _group_lines(heatmaps({"no groups": nm}).axes[0]) == []
    assert _ticks(fig.axes[0], 0, 11) == [0.0, 4.0, 8.0]  # a tick where each group starts
    fig, ax = plt.subplots()
    heatmap(nm, ax=ax, column_group=6)
    assert _group_lines(ax) == [5.5]
    wide = heatmaps({"64 columns": torch.ones(2, 64)}, column_group=4)
    ticks = _ticks(wide.axes[0], 0, 63)  # fewer ticks, each still where a group starts
    assert 3 <= len(ticks) <= 6 and all(t % 4 == 0 for t in ticks)


@pytest.mark.parametrize("bad", [1, 0, -4, 2.0, "4", True])
def test_column_group_must_be_an_int_of_at_least_two(bad):
    for draw in (lambda: heatmaps({"a": MASK}, column_group=bad),
                 lambda: heatmap(MASK, column_group=bad)):
        with pytest.raises(ValueError, match=r"column_group must be an int >= 2.*got"):
            draw()
    assert plt.get_fignums() == []  # refused before any figure was made


def test_wide_panels_keep_their_column_ticks_apart():
    # Three 128-column panels side by side used to read "90105120" under the last one.
    fig = heatmaps({str(i): torch.ones(10, 128) for i in range(3)}, kind="mask")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:3]:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels()
                 if t.get_text() and 0 <= t.get_position()[0] <= 127]
        em = ax.get_xticklabels()[0].get_fontsize() * fig.dpi / 72  # one em, in pixels
        assert len(boxes) >= 3
        assert all(b.x0 - a.x1 >= em for a, b in zip(boxes, boxes[1:])), "labels run together"


def _ticks(ax, low, high):
    return [float(t) for t in ax.get_xticks() if low <= t <= high]


def test_curves_over_whole_numbers_get_whole_number_ticks():
    epochs = np.arange(1, 6)  # 5 epochs: matplotlib's default puts ticks at 1.5, 2.5...
    fig = curves(epochs, {"loss": np.linspace(1, 0.2, 5)}, "epoch", "training loss")
    ticks = _ticks(fig.axes[0], 1, 5)
    assert ticks and all(t == int(t) for t in ticks)
    fig, axes = plt.subplots(1, 2)
    curves([1, 2, 3], {"a": [1, 2, 3]}, "epoch", "y", ax=axes[0])  # on a given axes too
    assert all(t == int(t) for t in _ticks(axes[0], 1, 3))
    curves([0.0, 0.5, 1.0], {"a": [1, 2, 3]}, "sparsity", "y", ax=axes[1])
    assert 0.5 in _ticks(axes[1], 0, 1), "fractional x keeps fractional ticks"


def test_integer_x_can_be_forced_either_way():
    fig = curves([1, 2], {"a": [1, 2]}, "x", "y", integer_x=False)
    assert any(t != int(t) for t in _ticks(fig.axes[0], 1, 2))
    fig = curves([0.0, 2.5, 5.0], {"a": [1, 2, 3]}, "x", "y", integer_x=True)
    assert all(t == int(t) for t in _ticks(fig.axes[0], 0, 5))


def test_curves_legend_can_go_outside_the_axes_or_away():
    ys = {"a": [1, 2, 3], "b": [3, 2, 1]}
    fig = curves([1, 2, 3], ys, "epoch", "y", legend_loc="outside")
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent()
    assert box.x0 > ax.get_window_extent().x1, "the legend sits right of the plot"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert curves([1, 2, 3], ys, "x", "y", legend_loc=None).axes[0].get_legend() is None
    assert curves([1, 2, 3], ys, "x", "y").axes[0].get_legend() is not None  # default: best
    with pytest.raises(TypeError, match="legend_loc must be"):
        curves([1, 2, 3], ys, "x", "y", legend_loc=1.5)


def test_curves_refuses_mismatched_lengths_before_drawing():
    with pytest.raises(ValueError, match="'b' has 2 values but x has 3"):
        curves([1, 2, 3], {"a": [1, 2, 3], "b": [1, 2]}, xlabel="x", ylabel="y")
    assert plt.get_fignums() == []


def test_layer_curves_legend_outside_the_last_panel():
    runs = {"dense": {"l0": [3, 2, 1], "l1": [1, 1, 1]},
            "masked": {"l0": [2, 1, 1], "l1": [2, 2, 2]}}
    fig = layer_curves([1, 2, 3], runs, "step", "norm", legend_loc="outside")
    first, last = fig.axes[0], fig.axes[1]
    assert first.get_legend() is None
    assert [t.get_text() for t in last.get_legend().get_texts()] == ["dense", "masked"]
    fig.canvas.draw()
    assert last.get_legend().get_window_extent().x0 > last.get_window_extent().x1
    assert layer_curves([1, 2, 3], runs, "s", "n").axes[0].get_legend() is not None
    assert all(t == int(t) for t in _ticks(first, 1, 3))
    with pytest.raises(ValueError, match="'masked', 'l1' has 1 values but x has 3"):
        layer_curves([1, 2, 3], {"masked": {"l1": [1]}}, "s", "n")
    plt.close("all")
    assert plt.get_fignums() == []


def test_layer_curves_in_a_grid_put_the_legend_in_the_empty_cell():
    runs = {"dense": {f"layer {i}": [3, 2, 1] for i in range(3)},
            "masked": {f"layer {i}": [2, 1, 1] for i in range(3)}}
    fig = layer_curves([1, 2, 3], runs, "step", "norm", ncols=2, size=3,
                       legend_loc="outside")
    assert tuple(fig.get_size_inches()) == pytest.approx((6.0, 5.1))
    panels, spare = fig.axes[:3], fig.axes[3]
    assert [ax.get_title() for ax in panels] == ["layer 0", "layer 1", "layer 2"]
    assert not spare.axison and not spare.lines
    assert [t.get_text() for t in spare.get_legend().get_texts()] == ["dense", "masked"]
    assert all(ax.get_legend() is None for ax in panels)
    assert panels[0].get_ylabel() and panels[2].get_ylabel()  # first panel of each row
    with pytest.raises(ValueError, match="ncols must be an int >= 1"):
        layer_curves([1, 2, 3], runs, "s", "n", ncols=0)


# --- Slider ---------------------------------------------------------------------------------

class Render:
    """A render function that counts its calls and draws something different per value."""

    def __init__(self):
        self.calls = []

    def __call__(self, value):
        self.calls.append(value)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot(range(int(value * 10) + 2))
        ax.set_title(f"v={value}")
        return fig


def frames_of(page):
    return json.loads(re.search(r"var frames = (\[.*?\]), labels", page).group(1))


def test_static_html_embeds_one_png_frame_per_value():
    values = [0.1, 0.5, 0.9]
    render = Render()
    page = Slider(render, values, label="sparsity", value=0.5, fmt=lambda v: f"{v:.0%}",
                  processes=1).static_html()
    frames = frames_of(page)
    assert len(frames) == len(values) == len(set(frames))
    for frame in frames:
        assert frame.startswith("data:image/png;base64,")
        assert base64.b64decode(frame.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", page)) == set(frames)
    assert render.calls == values


def test_static_html_has_a_range_input_and_the_initial_label():
    page = Slider(Render(), [0.1, 0.5, 0.9], label="sparsity", value=0.5,
                  fmt=lambda v: f"{v:.0%}").static_html()
    assert re.search(r'<input type="range" min="0" max="2" step="1" value="1"', page)
    assert "<output>50%</output>" in page
    assert "<span>sparsity</span>" in page
    assert 'alt="figure for sparsity = 50%"' in page
    assert "<script>" in page and "https://" not in page  # no CDN: works offline


def test_static_html_renders_once_and_closes_its_figures():
    render = Render()
    slider = Slider(render, [1, 2], processes=1)
    assert slider.static_html() == slider.static_html()
    assert render.calls == [1, 2]
    assert plt.get_fignums() == []


def test_mimebundle_is_the_static_twin_and_names_no_kernel_object():
    # A widget view in the output would be what JupyterLab shows, and once the notebook is
    # saved and reopened without the kernel that made it: "Error displaying widget".
    bundle = Slider(Render(), [1, 2, 3], label="k")._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert "maskutils-slider" in bundle["text/html"]
    assert "model_id" not in json.dumps(bundle)
    assert bundle["text/plain"] == "Slider over k: 3 settings"


def test_static_twin_keeps_jupyterlab_shortcuts_off_its_range_input():
    # Without it, JupyterLab's command-mode shortcuts can take the arrow keys of the slider.
    page = Slider(Render(), [1, 2]).static_html()
    assert re.search(r'<input type="range"[^>]* data-lm-suppress-shortcuts="true"', page)


def test_static_twin_script_finds_its_own_slider_by_id():
    page = Slider(Render(), [1, 2]).static_html()
    uid = re.search(r'<div class="maskutils-slider" id="(maskutils-slider-[0-9a-f]{10})">',
                    page).group(1)
    assert f'document.getElementById("{uid}")' in page
    other = Slider(Render(), [1, 2]).static_html()
    assert uid not in other, "two sliders on one page must not share an id"


def test_widget_redraws_when_the_slider_moves(capsys):
    render = Render()
    box = Slider(render, [1, 2, 3], value=2).widget()
    slider = box.children[0]
    assert render.calls == [2]
    slider.value = 2  # index of the value 3
    assert render.calls == [2, 3]
    slider.value = 0
    assert render.calls == [2, 3, 1]
    assert [label for label, _ in slider.options] == ["1", "2", "3"]


def test_slider_needs_at_least_one_value():
    with pytest.raises(ValueError, match="at least one setting"):
        Slider(Render(), [])


def test_slider_initial_value_must_be_one_of_the_values():
    with pytest.raises(ValueError, match=r"value 4 is not one of the slider's values \[1, 2, 3\]"):
        Slider(Render(), [1, 2, 3], value=4)


@pytest.mark.skipif(worker_count(4, 2) == 1, reason="parallel_map runs its loop here")
def test_frames_rendered_in_workers_are_the_frames_rendered_here():
    values = [0.1, 0.3, 0.5, 0.9]
    render = Render()
    shared = frames_of(Slider(render, values).static_html())
    assert render.calls == [], "the frames were drawn in worker processes"
    assert shared == frames_of(Slider(render, values, processes=1).static_html())
    assert render.calls == values
    assert plt.get_fignums() == []


@pytest.mark.parametrize("processes", [0, 2.5])
def test_slider_refuses_a_bad_process_count_at_once(processes):
    with pytest.raises(ValueError, match="processes must be an int >= 1"):
        Slider(Render(), [1, 2], processes=processes)


def test_slider_render_must_be_callable():
    with pytest.raises(TypeError, match="render must be a function"):
        Slider("not a function", [1, 2])


def test_slider_render_must_return_a_figure():
    slider = Slider(lambda v: plt.plot([v]), [1, 2])
    with pytest.raises(TypeError, match=r"render\(1\) returned list, not a matplotlib Figure"):
        slider.static_html()


def test_figures_are_closed_between_tests():
    assert plt.get_fignums() == []
    plt.figure()
    assert np.size(plt.get_fignums()) == 1
