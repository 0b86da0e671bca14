"""A slider over precomputed settings that works with and without a kernel.

``Slider(render, values)`` pre-renders every frame to PNG and displays as self-contained
HTML: an ``<input type="range">``, the frames as data URIs and a few lines of inline
JavaScript. The same output is the slider everywhere:

- in JupyterLab and Notebook 7 (tests/test_jupyterlab.py) and other front ends that run
  the script of a trusted output (an untrusted one shows the picture of the initial value);
- in the rendered book, with no kernel and no CDN;
- in a saved notebook reopened later, with or without a kernel: nothing in the output
  refers to a kernel-side object, so there is no "Error displaying widget: model not found"
  (which is what an ipywidgets output shows once its kernel has gone, unless the front end
  saved the widget state).

``Slider.widget()`` gives the kernel-backed ipywidgets version, which calls ``render`` again
on every move (``display(slider.widget())``); it needs the running kernel that made it.

>>> import matplotlib.pyplot as plt
>>> from maskutils.widgets import Slider
>>> def render(k):
...     fig, ax = plt.subplots()
...     ax.plot(range(k))
...     return fig
>>> s = Slider(render, [1, 2, 3], label="points")
>>> "maskutils-slider" in s.static_html()
True
"""
from __future__ import annotations

import base64
import html
import io
import json
import uuid
from typing import Callable, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .parallel import parallel_map, worker_count


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of ``fig``; the figure is closed (so it is not shown twice)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


class Slider:
    """A slider over ``values`` that redraws ``render(value) -> Figure``.

    - ``label``: what the slider sets, shown beside it (e.g. ``"sparsity"``).
    - ``value``: the initial setting (default: the first value).
    - ``fmt``: turns a value into the text shown beside the slider.
    - ``alt``: turns a value into the alt text of its picture.
    - ``processes``: the frames are rendered side by side in forked processes where
      ``maskutils.parallel.parallel_map`` can (the same pictures, sooner); ``render`` must then
      not rely on side effects of its earlier calls. ``processes=1`` renders them here.
    """

    def __init__(self, render: Callable[[object], Figure], values: Sequence, label: str = "value",
                 value=None, fmt: Callable[[object], str] = str,
                 alt: Callable[[object], str] | None = None, dpi: int = 80,
                 processes: int | None = None):
        if not callable(render):
            raise TypeError("render must be a function value -> matplotlib Figure")
        values = list(values)
        if not values:
            raise ValueError("values must hold at least one setting")
        if value is None:
            value = values[0]
        if value not in values:
            raise ValueError(f"value {value!r} is not one of the slider's values {values!r}")
        self.render, self.values, self.label = render, values, label
        self.value, self.fmt, self.dpi = value, fmt, dpi
        worker_count(len(values), processes)  # refuses a bad count now, not at display
        self.processes = processes
        self.alt = alt or (lambda v: f"figure for {label} = {fmt(v)}")
        self._html: str | None = None

    def _figure(self, value) -> Figure:
        fig = self.render(value)
        if not isinstance(fig, Figure):
            raise TypeError(f"render({value!r}) returned {type(fig).__name__}, not a matplotlib Figure")
        return fig

    def _png(self, value) -> bytes:
        return figure_png(self._figure(value), self.dpi)

    def static_html(self) -> str:
        """Self-contained HTML: all frames as data URIs, a range input and inline JavaScript."""
        if self._html is None:
            pngs = parallel_map(self._png, [(v,) for v in self.values], self.processes)
            frames = ["data:image/png;base64," + base64.b64encode(png).decode() for png in pngs]
            labels = [self.fmt(v) for v in self.values]
            alts = [self.alt(v) for v in self.values]
            start = self.values.index(self.value)
            uid = "maskutils-slider-" + uuid.uuid4().hex[:10]
            self._html = f"""<div class="maskutils-slider" id="{uid}">
<label style="display:flex;gap:0.6em;align-items:center;font-family:sans-serif">
<span>{html.escape(self.label)}</span>
<input type="range" min="0" max="{len(frames) - 1}" step="1" value="{start}" aria-label="{html.escape(self.label)}" data-lm-suppress-shortcuts="true" style="flex:1;max-width:24em">
<output>{html.escape(labels[start])}</output></label>
<img src="{frames[start]}" alt="{html.escape(alts[start])}" style="max-width:100%">
</div>
<script>(function () {{
  var root = document.getElementById("{uid}");
  if (!root) {{ return; }}
  var frames = {json.dumps(frames)}, labels = {json.dumps(labels)}, alts = {json.dumps(alts)};
  var input = root.querySelector("input"), img = root.querySelector("img"), out = root.querySelector("output");
  input.addEventListener("input", function () {{
    var i = Number(input.value);
    img.src = frames[i]; img.alt = alts[i]; out.textContent = labels[i];
  }});
}})();</script>"""
        return self._html

    def widget(self):
        """The kernel-backed ipywidgets version: a selection slider above the redrawn figure.

        ``render`` runs again on every move, so the figure follows state changed after the
        slider was made. It lives only as long as its kernel: a notebook saved with it and
        reopened shows an error in its place unless the front end saved the widget state.
        """
        import ipywidgets as widgets
        from IPython.display import display

        options = [(self.fmt(v), i) for i, v in enumerate(self.values)]
        slider = widgets.SelectionSlider(options=options, value=self.values.index(self.value),
                                         description=self.label, continuous_update=False,
                                         style={"description_width": "initial"},
                                         layout=widgets.Layout(width="32em"))
        out = widgets.Output()

        def draw(i):
            fig = self._figure(self.values[i])
            with out:
                out.clear_output(wait=True)
                display(fig)
            plt.close(fig)

        slider.observe(lambda change: draw(change["new"]), names="value")
        draw(slider.value)
        return widgets.VBox([slider, out])

    def _repr_mimebundle_(self, include=None, exclude=None):
        # The static twin alone: an ipywidgets view in the same output would win in
        # JupyterLab and, once saved and reopened without its kernel, show "Error displaying
        # widget: model not found" instead of the figures (front ends do not fall back to
        # another representation of the output).
        return {"text/plain": f"Slider over {self.label}: {len(self.values)} settings",
                "text/html": self.static_html()}
