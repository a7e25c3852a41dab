"""Where the trained models a run needs come from (teachers, sources, MAE stages): the
``method.teacher``-style config sections. See :mod:`rkd.experiment.model_cache` for the cache
and :mod:`rkd.experiment.pipeline` for how a missing model is trained; this module gathers
the public names."""

from rkd.experiment.model_cache import TeacherRun, cached_teacher_dir, teacher_config, teacher_key
from rkd.experiment.pipeline import ensure_named_models, ensure_teacher, load_teacher

__all__ = ["TeacherRun", "cached_teacher_dir", "ensure_named_models", "ensure_teacher", "load_teacher",
           "teacher_config", "teacher_key"]
