"""Inline SVG sparklines: no chart library, the server writes the path."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape


def sparkline(
    values: Sequence[float],
    failures: Sequence[float] | None = None,
    *,
    width: int = 600,
    height: int = 64,
    css: str = "spark",
    label: str = "",
) -> Markup:
    """An area line of `values` with `failures` as red bars along the bottom.

    The viewBox is `width` x `height`; the SVG scales to its container's width.
    """
    n = len(values)
    peak = max([*values, *(failures or []), 1])
    pad = 2.0
    usable = height - pad * 2
    step = width / max(1, n - 1)

    def y(v: float) -> float:
        return pad + usable - (v / peak) * usable

    points = [(i * step, y(v)) for i, v in enumerate(values)] or [(0.0, y(0)), (float(width), y(0))]
    if len(points) == 1:
        points.append((float(width), points[0][1]))
    line = " ".join(f"{x:.1f},{yy:.1f}" for x, yy in points)
    area = f"M0,{height} L" + " L".join(f"{x:.1f},{yy:.1f}" for x, yy in points) + f" L{points[-1][0]:.1f},{height} Z"
    bars = []
    if failures:
        bw = max(1.5, width / max(1, len(failures)) * 0.6)
        fstep = width / max(1, len(failures) - 1) if len(failures) > 1 else width
        for i, v in enumerate(failures):
            if v <= 0:
                continue
            h = max(2.0, (v / peak) * usable)
            x = min(max(0.0, i * fstep - bw / 2), width - bw)
            bars.append(f'<rect class="fail" x="{x:.1f}" y="{height - h:.1f}" width="{bw:.1f}" height="{h:.1f}"/>')
    label = str(escape(label))
    title = f"<title>{label}</title>" if label else ""
    return Markup(
        f'<svg class="{css}" viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="{label}">{title}'
        f'<path class="area" d="{area}"/><polyline class="line" points="{line}"/>'
        f'<line class="base" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/>'
        + "".join(bars)
        + "</svg>"
    )
