"""The LDM export as an MLflow model, logged from this file ("models from code": no pickle): a sampler.

Input: a table with columns `num_samples` and `seed` (one row per request). Output: uint8 (N, r, r, 3) images,
the rows' samples one after another; sample i of a row starts from noise seeded by (seed, i), as `ldm.sample`.
The artefacts `ldm` and `autoencoder` are the two export folders.

    mlflow models predict -m models:/litevae-ldm/1 -i request.json -t json
    # request.json: {"dataframe_records": [{"num_samples": 4, "seed": 0}]}
"""

import mlflow
from mlflow.pyfunc import PythonModel


class SamplerModel(PythonModel):
    def load_context(self, context):
        import torch

        from pipeline.export import load_ldm

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.ldm = load_ldm(context.artifacts["ldm"], autoencoder=context.artifacts["autoencoder"], device=device)

    def predict(self, context, model_input, params=None):
        import numpy as np

        from pipeline.export.inputs import quantise

        rows = model_input.to_dict("records")
        images = [quantise(self.ldm.sample(int(row["num_samples"]), seed=int(row["seed"]))) for row in rows]
        return np.concatenate([batch.permute(0, 2, 3, 1).numpy() for batch in images])  # (N, r, r, 3)


mlflow.models.set_model(SamplerModel())
