"""Studies: the paper's Table 3 and the learners' "why" questions, each row trained and evaluated
with the same budget (`transformer study`)."""

from transformer.study.report import verdict
from transformer.study.rows import Row, question_rows, study_rows, table3_rows
from transformer.study.runner import Budget, Spread, needs_more_seeds, run_rows, spread

__all__ = [
    "Budget",
    "Row",
    "Spread",
    "needs_more_seeds",
    "question_rows",
    "run_rows",
    "spread",
    "study_rows",
    "table3_rows",
    "verdict",
]
