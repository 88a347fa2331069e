"""The architecture as data: compound-scaling rules and variant tables, anchors, the model zoo."""
from effedge.arch.anchors import anchors_for, generate_anchors
from effedge.arch.complexity import analytic_complexity
from effedge.arch.scaling import EfficientDetSpec, EfficientNetSpec, ModelSpec, resolve
from effedge.arch.zoo import architecture, model_table

__all__ = ["EfficientDetSpec", "EfficientNetSpec", "ModelSpec", "analytic_complexity", "anchors_for", "architecture",
           "generate_anchors", "model_table", "resolve"]
