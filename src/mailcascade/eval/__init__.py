"""Eval harness: eval sets, metrics, runner, report, compare."""
