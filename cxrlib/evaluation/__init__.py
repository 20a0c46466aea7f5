"""Scoring a trained run: test-split metrics, result tables, the run report, the REFLACX
external check and the ablation. Imports training, metrics and config."""
