"""The 4-point target rule: closing point dropped, hull reduced (or a triangle extended), canonical order."""

from __future__ import annotations

import numpy as np
import pytest

from raysearch.data.polygons import canonical_order, signed_area, to_four_points

SQUARE = np.array([[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]], dtype=np.float32)


def test_closed_ring_drops_its_repeated_first_point() -> None:
    ring = np.vstack([SQUARE, SQUARE[:1]])
    np.testing.assert_allclose(to_four_points(ring), SQUARE)


def test_triangle_gets_the_midpoint_of_its_longest_edge() -> None:
    triangle = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.5]], dtype=np.float32)
    out = to_four_points(triangle)
    assert out.shape == (4, 2)
    assert any(np.allclose(p, [0.5, 0.3]) for p in out)  # midpoint of the hypotenuse (0.9, 0.1)-(0.1, 0.5)
    assert abs(signed_area(out)) == pytest.approx(abs(signed_area(triangle)), rel=1e-5)


def test_six_points_lose_the_vertices_that_add_least_area() -> None:
    # A square with two shallow bumps: the bumps' tips span the smallest triangles and are removed.
    hexagon = np.array([[0.2, 0.2], [0.5, 0.18], [0.8, 0.2], [0.8, 0.8], [0.5, 0.82], [0.2, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(to_four_points(hexagon), SQUARE)


def test_interior_points_are_ignored_by_the_hull() -> None:
    with_inner = np.vstack([SQUARE[:2], [[0.5, 0.5]], SQUARE[2:]])
    np.testing.assert_allclose(to_four_points(with_inner), SQUARE)


@pytest.mark.parametrize("shift", range(4))
@pytest.mark.parametrize("reverse", [False, True])
def test_order_is_clockwise_from_top_left_whatever_the_input_order(shift: int, reverse: bool) -> None:
    quad = np.array([[0.3, 0.1], [0.9, 0.3], [0.7, 0.9], [0.1, 0.6]], dtype=np.float32)
    given = np.roll(quad[::-1] if reverse else quad, shift, axis=0)
    out = to_four_points(given)
    np.testing.assert_allclose(out, quad)  # (0.3, 0.1) has the smallest x + y; clockwise on screen follows
    assert signed_area(out) > 0
    np.testing.assert_allclose(canonical_order(given), quad)


@pytest.mark.parametrize("points", [
    [[0.1, 0.1], [0.1, 0.1], [0.5, 0.5], [0.1, 0.1]],  # two distinct points
    [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]],  # collinear
])
def test_degenerate_polygons_are_refused(points: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        to_four_points(np.array(points, dtype=np.float32))
