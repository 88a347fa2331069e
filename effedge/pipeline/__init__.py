"""Orchestration: ``compile`` runs the stages in order through a content-hash cache, records the manifest and
chooses the backend; ``build_engine_file`` runs the engine stage alone; ``bench_matrix`` compiles and benches a
variant × precision × batch matrix; ``diagnose`` says what this machine can do."""
from effedge.pipeline.matrix import bench_matrix
from effedge.pipeline.compile import (BACKENDS, BackendChoice, CompileConfig, build_engine_file, choose_backend,
                                      compile_model)

__all__ = ["BACKENDS", "BackendChoice", "CompileConfig", "bench_matrix", "build_engine_file", "choose_backend",
           "compile_model"]
