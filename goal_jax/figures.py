"""Figures drawn by Agg on their own canvas: PNGs from any process, notebooks included.

No pyplot: the process-wide backend is never switched (a notebook keeps its inline plots) and no
figure is left registered with pyplot.
"""
import os

from matplotlib import figure
from matplotlib.backends import backend_agg


def new_figure(rows: int, columns: int, figsize: tuple[float, float]):
  """(figure, axes [rows, columns])."""
  fig = figure.Figure(figsize=figsize)
  backend_agg.FigureCanvasAgg(fig)
  return fig, fig.subplots(rows, columns, squeeze=False)


def save_figure(fig, path: str) -> None:
  """Tight layout, then a 100-dpi PNG at `path` (its folder made if needed)."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png", dpi=100)
