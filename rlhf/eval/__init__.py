"""Evaluation: metrics as pure functions (:mod:`rlhf.eval.metrics`, re-exported here) and the
policy-vs-reference evaluation behind ``rlhf eval`` (:func:`rlhf.eval.evaluate.evaluate`).
See docs/evaluation.md for what each number means."""

from rlhf.eval.metrics import (
                               best_of_n_curve,
                               best_of_n_distribution,
                               best_of_n_kl_bound,
                               best_of_n_kl_estimate,
                               best_of_n_kl_exact,
                               distinct_n,
                               mean_stderr,
                               sequence_kl,
                               win_rate,
)

__all__ = ["distinct_n", "mean_stderr", "win_rate", "sequence_kl", "best_of_n_kl_bound",
           "best_of_n_distribution", "best_of_n_kl_exact", "best_of_n_kl_estimate", "best_of_n_curve"]
