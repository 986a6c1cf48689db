"""Orchestration: the Prefect flow that sequences dvc.yaml's stages, its serving, and the end-of-run summary."""
