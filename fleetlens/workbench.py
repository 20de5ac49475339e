"""The analyst workbench's notebooks, run headless: ``make notebooks`` and the tests execute
them with papermill and keep an HTML copy of each for reading without Jupyter."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NOTEBOOKS", "NOTEBOOKS_DIR", "NotebookRun", "figures_in", "run_notebooks"]

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_explore_history", "02_capacity_planning", "03_alert_tuning", "04_pipeline_health")
_FIGURE_TYPES = ("image/png", "image/svg+xml")


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: where its copies are and what it produced."""

    name: str
    notebook: Path
    html: Path
    figures: int
    seconds: float


def figures_in(notebook: Any) -> int:
    """How many figures (PNG or SVG outputs) an executed notebook holds."""
    return sum(
        1
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if any(kind in output.get("data", {}) for kind in _FIGURE_TYPES)
    )


def run_notebooks(
    out: Path,
    *,
    names: Sequence[str] = NOTEBOOKS,
    parameters: Mapping[str, Any] | None = None,
    source: Path = NOTEBOOKS_DIR,
    progress: Callable[[str], None] | None = None,
) -> list[NotebookRun]:
    """Execute ``names`` from ``source`` into ``out`` (``NAME.ipynb`` with outputs and
    ``NAME.html``). Kernels inherit this process's environment, hence its ``FLEETLENS_*``
    settings: the notebooks read the current profile's lake.

    Args:
        out: Output folder.
        names: Notebooks to run, in order.
        parameters: Papermill parameters given to every notebook that declares them.
        source: Where the notebooks are.
        progress: Called with each name before it runs.

    Raises:
        papermill.PapermillExecutionError: A cell failed (the partial copy is in ``out``).
        ValueError: A notebook made no figure.
    """
    import time

    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in names:
        if progress is not None:
            progress(name)
        began = time.perf_counter()
        target = out / f"{name}.ipynb"
        declared = _declared(source / f"{name}.ipynb")
        papermill.execute_notebook(
            str(source / f"{name}.ipynb"),
            str(target),
            parameters={k: v for k, v in (parameters or {}).items() if k in declared},
            cwd=str(source),
            progress_bar=False,
            kernel_name="python3",
        )
        executed = nbformat.read(target, as_version=4)
        figures = figures_in(executed)
        if not figures:
            raise ValueError(f"{name} made no figure")
        html, _ = HTMLExporter().from_notebook_node(executed)
        (out / f"{name}.html").write_text(html, encoding="utf-8")
        runs.append(
            NotebookRun(name, target, out / f"{name}.html", figures, time.perf_counter() - began)
        )
    return runs


def _declared(path: Path) -> set[str]:
    """The parameters a notebook declares (its ``parameters`` cell)."""
    import papermill

    return set(papermill.inspect_notebook(str(path)))
