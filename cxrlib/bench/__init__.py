"""Benchmarks that print figures: the network step, the data pipeline and whole stages.
Imports training, model and data; nothing imports bench except the command line."""
