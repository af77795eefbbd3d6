"""Kubeflow Pipelines components: thin adapters from typed artifacts to :mod:`cdanet.steps`.

Each component unwraps its ``Input``/``Output`` artifacts into paths, calls one library function and
logs what it returns. They are lightweight Python components whose base image is the project's own
image (``docker/Dockerfile``), with kfp and the project baked in, so nothing is pip-installed at run
time and the same code runs under ``kfp.local.SubprocessRunner`` and in a cluster. The image is a
compile-time setting: ``pipeline.create_pipeline(image=...)`` overrides it per task.
"""

from components._image import DEFAULT_IMAGE
from components.baseline import baseline
from components.configure import configure
from components.evaluate import evaluate
from components.gate import gate
from components.preprocess import preprocess
from components.register import register
from components.train import finetune, pretrain
from components.validate import validate

__all__ = [
    "DEFAULT_IMAGE",
    "configure",
    "preprocess",
    "validate",
    "pretrain",
    "finetune",
    "evaluate",
    "baseline",
    "gate",
    "register",
]
