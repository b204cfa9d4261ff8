"""The 4-point polygon target: reducing any labelled polygon to 4 points in one canonical order.

Rule (documented in the README): drop a closing point that repeats the first; take the convex hull;
while more than 4 vertices remain, remove the vertex whose triangle with its two neighbours has the
smallest area (Visvalingam–Whyatt, which keeps the outline's extent); a triangle gets the midpoint of
its longest edge as a fourth point. The 4 points are then ordered clockwise on screen (image
coordinates, y pointing down, so the shoelace sum is positive) starting from the top-left point
(smallest x + y).
"""

from __future__ import annotations

import cv2
import numpy as np

CLOSE_TOLERANCE = 1e-6


def signed_area(points: np.ndarray) -> float:
    """Shoelace area of a polygon (K, 2); positive when clockwise on screen (y down)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def canonical_order(points: np.ndarray) -> np.ndarray:
    """Order a polygon's points clockwise on screen, starting from the top-left (smallest x + y)."""
    points = np.asarray(points, dtype=np.float32)
    if signed_area(points) < 0:
        points = points[::-1]
    start = int(np.argmin(points[:, 0] + points[:, 1]))
    return np.roll(points, -start, axis=0)


def _drop_closing_point(points: np.ndarray) -> np.ndarray:
    if len(points) > 1 and np.allclose(points[0], points[-1], atol=CLOSE_TOLERANCE):
        return points[:-1]
    return points


def _simplify_to(points: np.ndarray, count: int) -> np.ndarray:
    points = list(points)
    while len(points) > count:
        areas = [
            abs(signed_area(np.array([points[i - 1], points[i], points[(i + 1) % len(points)]])))
            for i in range(len(points))
        ]
        points.pop(int(np.argmin(areas)))
    return np.array(points, dtype=np.float32)


def _add_midpoint_of_longest_edge(points: np.ndarray) -> np.ndarray:
    edges = np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1)
    i = int(np.argmax(edges))
    midpoint = (points[i] + points[(i + 1) % len(points)]) / 2
    return np.insert(points, i + 1, midpoint, axis=0)


def to_four_points(points: np.ndarray) -> np.ndarray:
    """Reduce a polygon of 3 or more points to the canonical 4-point target (4, 2), float32.

    Raises ValueError for fewer than 3 distinct points.
    """
    points = _drop_closing_point(np.asarray(points, dtype=np.float32).reshape(-1, 2))
    if len(np.unique(points, axis=0)) < 3:
        raise ValueError(f"a polygon needs at least 3 distinct points, got {len(points)}")
    hull = cv2.convexHull(points.reshape(-1, 1, 2)).reshape(-1, 2)
    if len(hull) < 3:
        raise ValueError("the polygon's points are collinear")
    if len(hull) > 4:
        hull = _simplify_to(hull, 4)
    elif len(hull) == 3:
        hull = _add_midpoint_of_longest_edge(hull)
    return canonical_order(hull)
