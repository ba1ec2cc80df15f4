"""The robustness picture: the attack x defense matrix, the thesis claims judged with intervals, the report."""
