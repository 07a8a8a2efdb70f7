"""Studies: the paper's Table 3 and the learners' "why" questions, each row trained and evaluated
with the same budget (`transformer study`)."""

from transformer.study.rows import Row, question_rows, study_rows, table3_rows
from transformer.study.runner import Budget, run_rows

__all__ = ["Budget", "Row", "question_rows", "run_rows", "study_rows", "table3_rows"]
