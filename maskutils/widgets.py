"""A slider over precomputed settings that works with and without a kernel.

``Slider(render, values)`` displays as

- a live ipywidgets slider in Jupyter, JupyterLab, VS Code or Colab (``render`` runs on
  every move), and
- its *static twin* everywhere else: every frame pre-rendered to PNG and embedded in
  self-contained HTML with an ``<input type="range">`` and a few lines of inline JavaScript,
  so the slider still moves in the rendered book with no kernel and no CDN.

Both travel in one display bundle; the front end picks what it can show. The book's
configuration tells Jupyter Book to render the static twin.

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
    """

    def __init__(self, render: Callable[[object], Figure], values: Sequence, label: str = "value",
                 value=None, fmt: Callable[[object], str] = str,
                 alt: Callable[[object], str] | None = None, dpi: int = 80):
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
        self.alt = alt or (lambda v: f"figure for {label} = {fmt(v)}")
        self._html: str | None = None

    def _figure(self, value) -> Figure:
        fig = self.render(value)
        if not isinstance(fig, Figure):
            raise TypeError(f"render({value!r}) returned {type(fig).__name__}, not a matplotlib Figure")
        return fig

    def static_html(self) -> str:
        """Self-contained HTML: all frames as data URIs, a range input and inline JavaScript."""
        if self._html is None:
            frames = [
                "data:image/png;base64," + base64.b64encode(figure_png(self._figure(v), self.dpi)).decode()
                for v in self.values
            ]
            labels = [self.fmt(v) for v in self.values]
            alts = [self.alt(v) for v in self.values]
            start = self.values.index(self.value)
            uid = "maskutils-slider-" + uuid.uuid4().hex[:10]
            self._html = f"""<div class="maskutils-slider" id="{uid}">
<label style="display:flex;gap:0.6em;align-items:center;font-family:sans-serif">
<span>{html.escape(self.label)}</span>
<input type="range" min="0" max="{len(frames) - 1}" step="1" value="{start}" aria-label="{html.escape(self.label)}" style="flex:1;max-width:24em">
<output>{html.escape(labels[start])}</output></label>
<img src="{frames[start]}" alt="{html.escape(alts[start])}" style="max-width:100%">
</div>
<script>(function () {{
  var root = document.getElementById("{uid}");
  var frames = {json.dumps(frames)}, labels = {json.dumps(labels)}, alts = {json.dumps(alts)};
  var input = root.querySelector("input"), img = root.querySelector("img"), out = root.querySelector("output");
  input.addEventListener("input", function () {{
    var i = Number(input.value);
    img.src = frames[i]; img.alt = alts[i]; out.textContent = labels[i];
  }});
}})();</script>"""
        return self._html

    def widget(self):
        """The live ipywidgets version: a selection slider above the redrawn figure."""
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
        bundle = {"text/plain": f"Slider over {self.label}: {len(self.values)} settings",
                  "text/html": self.static_html()}
        try:
            live = self.widget()._repr_mimebundle_()
        except ImportError:  # no ipywidgets: the static twin alone
            return bundle
        bundle.update({k: v for k, v in live.items() if k != "text/plain"})
        return bundle
