"""Helpers the tests share: case records, suites that fault, tiny Hugging Face checkpoints, a local Slurm cluster."""
