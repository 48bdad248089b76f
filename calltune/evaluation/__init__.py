"""Evaluation: batch inference on the test split, metrics with bootstrap intervals, the judge, whole-call
simulation and realism, error analysis, the evaluate step and the promotion gate.
"""
