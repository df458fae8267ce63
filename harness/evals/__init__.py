"""Evaluations that run inside a worker on the model under its current layout."""
