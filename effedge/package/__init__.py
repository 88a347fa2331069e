"""Deployment bundles from a build directory (reads build.json only): a Triton model repository."""
from effedge.package.triton import package_triton, triton_config

__all__ = ["package_triton", "triton_config"]
