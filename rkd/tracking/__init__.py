"""MLflow tracking (the only package that imports mlflow)."""

from rkd.tracking.mlflow_tracker import (
    DEFAULT_TRACKING_URI,
    PARENT_TAG,
    MlflowCallback,
    MlflowRun,
    absolute_tracking_uri,
    create_run,
    end_run,
    end_tagged_runs,
    finish_run,
    get_or_create_experiment,
    prepare_store,
    resolve_tracking_uri,
)
from rkd.tracking.reachability import TrackingUnreachable, check_tracking

__all__ = ["DEFAULT_TRACKING_URI", "PARENT_TAG", "MlflowCallback", "MlflowRun", "absolute_tracking_uri",
           "create_run", "end_run", "end_tagged_runs", "finish_run", "get_or_create_experiment", "prepare_store",
           "resolve_tracking_uri",
           "TrackingUnreachable", "check_tracking"]
