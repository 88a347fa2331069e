"""Shapes a spec implies, shared by the network builder (:mod:`effedge.models`) and the analytic counter
(:mod:`effedge.arch.complexity`): the input size a model is built for, the pyramid's feature-map sizes, the
BiFPN's nodes. Pure Python, so the zoo's tables need no torch."""
from __future__ import annotations

from typing import Union

from effedge.arch.scaling import EfficientDetSpec, ModelSpec
from effedge.errors import VariantError

Size = tuple[int, int]


def input_size_for(spec: ModelSpec, image_size: Union[int, Size, None] = None) -> Size:
    """The (H, W) a model is built for; detectors need a multiple of their ``size_multiple``."""
    if image_size is None:
        return spec.resolution, spec.resolution
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(not isinstance(s, int) or s <= 0 for s in size):
        raise VariantError(f"input size {image_size!r} is not a positive integer or (height, width) pair")
    if isinstance(spec, EfficientDetSpec):
        stride = spec.size_multiple
        if any(s % stride for s in size):
            near = sorted({max(stride, s // stride * stride) for s in size} | {(s // stride + 1) * stride
                                                                                for s in size})
            what = "the backbone stride" if spec.lite else "the largest feature stride"
            raise VariantError(f"input size {size[0]}x{size[1]} is not a multiple of {stride}, {what} of "
                               f"{spec.name}; use e.g. {' or '.join(map(str, near[:2]))}")
    return size


def pyramid_sizes(image_size: Size, max_level: int) -> dict[int, Size]:
    """Feature-map size of every level 0..max_level (each level halves, rounding up: TF 'same', stride 2)."""
    sizes = {0: image_size}
    for level in range(1, max_level + 1):
        h, w = sizes[level - 1]
        sizes[level] = ((h + 1) // 2, (w + 1) // 2)
    return sizes


def bifpn_nodes(min_level: int, max_level: int) -> list[tuple[int, tuple[int, ...]]]:
    """BiFPN nodes as (level, input offsets). Offsets index the list of features: the ``num_levels`` inputs
    first (P_min..P_max), then each node's output in creation order."""
    latest = {level: [level - min_level] for level in range(min_level, max_level + 1)}
    nodes = []
    next_id = max_level - min_level + 1
    for level in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append((level, (latest[level][-1], latest[level + 1][-1])))
        latest[level].append(next_id)
        next_id += 1
    for level in range(min_level + 1, max_level + 1):  # bottom-up
        nodes.append((level, (*latest[level], latest[level - 1][-1])))
        latest[level].append(next_id)
        next_id += 1
    return nodes
