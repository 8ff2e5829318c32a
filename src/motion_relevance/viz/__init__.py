"""Visualisation of relevance: heatmaps, explanation grids (Hiley et al. 2020, Fig. 3), overlay videos and plots.

Plain library (numpy, matplotlib Agg via ``Figure``, OpenCV, Pillow); no Lightning or Hydra imports.
"""

from motion_relevance.viz.colormaps import (
    blend,
    channel_sum,
    colorize,
    grey_frames,
    normalize_relevance,
    relevance_to_heatmap,
)
from motion_relevance.viz.grid import explanation_grid_figure, render_explanation_grid, save_explanation_grid
from motion_relevance.viz.overlay import (
    draw_text_bar,
    iter_overlay_frames,
    overlay_clip_frames,
    side_by_side,
    upscale_nearest,
    write_overlay_video,
)
from motion_relevance.viz.plots import (
    plot_faithfulness_curves,
    plot_metric_vs_sigma,
    plot_randomization,
    plot_timeline,
    table_rows,
)
from motion_relevance.viz.temporal import curve_strip, plot_temporal_curves
from motion_relevance.viz.video_writer import VideoWriter, VideoWriterError

__all__ = [
    "VideoWriter",
    "VideoWriterError",
    "blend",
    "channel_sum",
    "colorize",
    "curve_strip",
    "draw_text_bar",
    "explanation_grid_figure",
    "grey_frames",
    "iter_overlay_frames",
    "normalize_relevance",
    "overlay_clip_frames",
    "plot_faithfulness_curves",
    "plot_randomization",
    "plot_temporal_curves",
    "plot_metric_vs_sigma",
    "plot_timeline",
    "relevance_to_heatmap",
    "render_explanation_grid",
    "save_explanation_grid",
    "side_by_side",
    "table_rows",
    "upscale_nearest",
    "write_overlay_video",
]
