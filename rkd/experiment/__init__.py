"""Experiment runs: the run pipeline and what it is built from.

* :mod:`.pipeline` -- :func:`run_experiment` (prepare -> train -> evaluate -> track) and the
  trained models a run loads (:func:`ensure_teacher`, :func:`load_teacher`);
* :mod:`.place` -- :class:`RunPlace`, who and where a run is;
* :mod:`.builders` -- device, datasets and model from a config;
* :mod:`.model_cache` -- trained models cached by the identity of their config;
* :mod:`.run_dir` -- run directories and their ``run.json``;
* :mod:`.reevaluate` -- a finished run's model, evaluated again.
"""

from rkd.engine.device import resolve_device
from rkd.experiment.builders import build_datasets, build_model, num_classes_of
from rkd.experiment.model_cache import TeacherRun, cached_teacher_dir, teacher_config, teacher_key
from rkd.experiment.pipeline import (
    LoadedModel,
    RunOutput,
    ensure_named_models,
    ensure_teacher,
    load_teacher,
    run_experiment,
    training_set,
)
from rkd.experiment.place import RunPlace
from rkd.experiment.reevaluate import evaluate_run, load_trained_model
from rkd.experiment.run_dir import unique_dir
from rkd.methods.macd import macd_adversarial_set

__all__ = ["LoadedModel", "RunOutput", "RunPlace", "TeacherRun", "build_datasets", "build_model",
           "cached_teacher_dir", "ensure_named_models", "ensure_teacher", "evaluate_run", "load_teacher",
           "load_trained_model", "macd_adversarial_set", "num_classes_of", "resolve_device", "run_experiment",
           "teacher_config", "teacher_key", "training_set", "unique_dir"]
