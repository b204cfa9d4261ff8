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
    with pytest.raises(ValueError, match="at least 3 distinct points|the polygon's points are collinear$"):
        to_four_points(np.array(points, dtype=np.float32))


def test_signed_area_is_the_shoelace_area_positive_clockwise_on_screen() -> None:
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float32)  # clockwise with y pointing down
    assert signed_area(unit) == 1.0
    rectangle = np.array([[0.2, 0.1], [0.6, 0.1], [0.6, 0.35], [0.2, 0.35]])
    assert signed_area(rectangle) == pytest.approx(0.1) and signed_area(rectangle[::-1]) == pytest.approx(-0.1)


def test_the_start_is_the_smallest_x_plus_y_not_the_topmost_point() -> None:
    quad = np.array([[0.1, 0.3], [0.6, 0.2], [0.9, 0.8], [0.2, 0.9]])  # (0.6, 0.2) is higher, (0.1, 0.3) top-left
    for shift in range(4):
        np.testing.assert_allclose(canonical_order(np.roll(quad, shift, axis=0)), quad, rtol=1e-6)


def test_the_target_is_float32_whatever_the_input() -> None:
    hexagon = np.array([[0.2, 0.2], [0.5, 0.18], [0.8, 0.2], [0.8, 0.8], [0.5, 0.82], [0.2, 0.8]], dtype=np.float64)
    assert to_four_points(hexagon).dtype == np.float32
    assert canonical_order(SQUARE.astype(np.float64)).dtype == np.float32


def test_the_longest_edge_is_measured_by_its_length() -> None:
    # far from the origin, the longest edge is not the one whose end points add up to the longest vector
    triangle = np.array([[0.9, 0.9], [1.0, 0.9], [0.9, 0.2]], dtype=np.float32)
    out = to_four_points(triangle)
    assert any(np.allclose(p, [0.95, 0.55]) for p in out)  # midpoint of (1.0, 0.9)-(0.9, 0.2)
    np.testing.assert_allclose(to_four_points(np.array([[0.5, 0.5], [0.6, 0.5], [0.5, 0.9]])),
                               [[0.5, 0.5], [0.6, 0.5], [0.55, 0.7], [0.5, 0.9]], rtol=1e-6)


def test_a_pentagon_loses_its_flattest_vertex() -> None:
    pentagon = np.array([[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.5, 0.82], [0.2, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(to_four_points(pentagon), SQUARE)


@pytest.mark.parametrize(("points", "count"), [
    ([[0.1, 0.1], [0.5, 0.5], [0.1, 0.1]], 2),  # a closed ring of two points: the closing point is dropped
    ([[0.3, 0.3], [0.3, 0.3]], 1),
])
def test_too_few_points_are_counted_without_the_closing_point(points: list[list[float]], count: int) -> None:
    with pytest.raises(ValueError, match=f"at least 3 distinct points, got {count}$"):
        to_four_points(np.array(points, dtype=np.float32))
