"""The paper's claims, measured by the pipeline (issue 13 §5): paired small-budget DVC experiments, their verdicts
and reports/paper_claims.md.

    python -m pipeline.claims plan      # the arms, their overrides and budget, the estimated time; runs nothing
    python -m pipeline.claims run       # every arm as `dvc exp run`, then the report, all logged to MLflow
    python -m pipeline.claims report    # rewrite the report from reports/claims_measurements.json

Modules: budget (the profile, profiles/claims.yaml), arms (recipes and their `-S` overrides), snapshot (the private
clone the experiments run in), experiments (one `dvc exp run` and its measures), measures (metrics JSON -> numbers),
hf_error (the high-frequency error), verdict (the rule), claims (the paper's claims and numbers), report (markdown
and figures), runner (the whole run in MLflow). No DVC stage imports this package.
"""
