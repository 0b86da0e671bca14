import pytest
import torch

from maskutils import glue, mean_range


def test_mean_range_formats_mean_min_and_max():
    assert mean_range([0.5, 0.25, 0.75]) == "50.0% (25.0-75.0%)"
    assert mean_range(torch.tensor([1.0, 3.0]), ".1f") == "2.0 (1.0-3.0)"
    assert mean_range([torch.tensor(0.2)], ".2f") == "0.20 (0.20-0.20)"


@pytest.mark.parametrize("values, error, match", [
    ([], ValueError, "empty"),
    ([0.1, float("nan")], ValueError, "NaN"),
    (["a"], TypeError, "numbers"),
    (3.0, TypeError, "numbers"),
])
def test_mean_range_rejects_bad_values(values, error, match):
    with pytest.raises(error, match=match):
        mean_range(values)


def test_mean_range_rejects_a_bad_format():
    with pytest.raises(TypeError, match="format spec"):
        mean_range([1.0], fmt=2)


def test_glue_returns_the_value_outside_a_kernel_and_refuses_a_bad_name():
    assert glue("sparsity_kept", "50.0%") == "50.0%"
    with pytest.raises(ValueError, match="identifier"):
        glue("two words", 1)


def test_glue_writes_what_myst_nb_reads(tmp_path):
    # In a kernel, glue leaves the hidden output that myst-nb's own glue leaves.
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from maskutils import glue\nx = glue('margin', '+1.2 points')")])
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}
    result = single_nb_execution(notebook, cwd=str(tmp_path), timeout=60, allow_errors=False)
    assert result.err is None
    (output,) = notebook.cells[0].outputs
    assert output["metadata"]["scrapbook"] == {"name": "margin",
                                               "mime_prefix": "application/papermill.record/"}
    assert output["data"]["application/papermill.record/text/plain"] == "'+1.2 points'"
