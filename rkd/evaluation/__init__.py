"""Robust-accuracy evaluation and the results.json format."""

from rkd.evaluation.results import (
                                   SCHEMA,
                                   comparison_table,
                                   distillation_table,
                                   make_results,
                                   read_results,
                                   results_markdown,
                                   write_result_files,
                                   write_results,
)
from rkd.evaluation.robust_accuracy import (
                                   accuracy,
                                   attack_entry,
                                   eval_subset,
                                   evaluate,
                                   input_gradient_stats,
                                   jsma_eval,
                                   step_sweep,
)

__all__ = ["SCHEMA", "accuracy", "attack_entry", "comparison_table", "distillation_table", "eval_subset", "evaluate",
           "input_gradient_stats", "jsma_eval", "make_results", "read_results", "results_markdown", "step_sweep",
           "write_result_files", "write_results"]
