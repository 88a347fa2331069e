"""Deployment bundles from a build directory (reads build.json only): a Triton model repository, a DeepStream
nvinfer bundle."""
from effedge.package.deepstream import deepstream_config, package_deepstream
from effedge.package.triton import package_triton, triton_config

__all__ = ["deepstream_config", "package_deepstream", "package_triton", "triton_config"]
