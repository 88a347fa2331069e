"""The synthetic shapes dataset now lives in the package (effedge.demo.shapes, behind `effedge demo-images`);
the dev scripts and tests keep importing it as ``shapes``."""
from effedge.demo.shapes import CATEGORIES, generate, make_image  # noqa: F401
