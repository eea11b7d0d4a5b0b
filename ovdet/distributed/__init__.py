"""Batch inference across processes and machines.

* :mod:`ovdet.distributed.raydata` — Ray Data: images read and decoded by Ray, a pool of actors
  that each load the detector once, results written as parquet (``ovdet predict --engine ray``).

Ray and pyarrow are imported only when a pipeline is built or run (the ``[ray]`` extra).
"""

from ovdet.distributed.raydata import (
    RAY_MISSING,
    SUMMARY_FILE,
    ActorPlan,
    BatchDetector,
    RayPredictConfig,
    RayPredictSummary,
    decode_batch,
    import_ray,
    load_model,
    plan_actors,
    predict_dataset,
    read_source,
    result_schema,
    results_table,
    run_ray_predict,
    source_paths,
)

__all__ = [
    "RAY_MISSING",
    "SUMMARY_FILE",
    "ActorPlan",
    "BatchDetector",
    "RayPredictConfig",
    "RayPredictSummary",
    "decode_batch",
    "import_ray",
    "load_model",
    "plan_actors",
    "predict_dataset",
    "read_source",
    "result_schema",
    "results_table",
    "run_ray_predict",
    "source_paths",
]
