"""The autoencoder export as an MLflow model, logged from this file ("models from code": no pickle).

Input: uint8 RGB images as one numpy array (N, H, W, 3), any H and W. Output: their reconstructions (posterior
mean decoded), uint8 (N, H, W, 3). The artefact `autoencoder` is the export folder (pipeline/export/layout.py).

    mlflow models predict -m models:/litevae-autoencoder/1 -i images.json -t json   # {"inputs": [[[[r, g, b], ...]]]}
"""

import mlflow
from mlflow.pyfunc import PythonModel


class AutoencoderModel(PythonModel):
    def load_context(self, context):
        import torch

        from pipeline.export import load_autoencoder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_autoencoder(context.artifacts["autoencoder"], device=device)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        from pipeline.export.inputs import quantise

        images = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8)).permute(0, 3, 1, 2)
        return quantise(self.vae.reconstruct(images)).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


mlflow.models.set_model(AutoencoderModel())
