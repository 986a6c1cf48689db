"""Typed configuration: the params.yaml schema (schema.py), the parser and YAML reader behind it (parsing.py),
and named profiles as `dvc exp run -S` overrides (profiles.py)."""
