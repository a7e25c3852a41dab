"""rkd: distil adversarial robustness into neural networks.

Layers (imports point downwards only; see README "Layout"):

    rkd/cli.py, jobs/               thin entry points
    rkd/experiment.py, quickstart   one run = build -> train -> evaluate -> track
    rkd/tracking/                   the only package importing mlflow
    rkd/engine/, rkd/evaluation/    training loop + callbacks + checkpoints; robust accuracy
    rkd/methods/                    one file per training method, returning named loss terms
    rkd/attacks/                    threat models and attacks over [0,1] tensors
    rkd/models/, rkd/data/          networks with feature taps; datasets in [0,1]
    rkd/config/                     typed, validated YAML configs
"""

__version__ = "0.1.0"

#: the environment variable naming what started a job (``rkd quickstart``, ``jobs/reproduce.py``):
#: the MLflow runs' ``mlflow.source.name``, passed on to Ray workers (rkd.tracking.source_tags)
SOURCE_ENV = "RKD_SOURCE"
