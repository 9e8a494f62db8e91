"""What every single-panel benchmark plot ends with: grid, legend, layout, file."""

from __future__ import annotations


def finish_plot(fig, ax, path: str) -> None:
    """Log-friendly grid, a small legend, tight layout; saved to ``path``."""
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
