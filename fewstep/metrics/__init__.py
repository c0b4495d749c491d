"""FID / KID / FD: feature extractors, streaming statistics, Frechet distance.

`fewstep fid` (fewstep/commands/fid.py) is the command-line front end; docs/metrics.md states
the protocol. Everything here needs only torch and numpy (torch-fidelity for `inception`; the
`mnist` extractor's classifier is a diffusers model from `fewstep.models`).
"""

from fewstep.metrics.features import (
    FeatureExtractor,
    available_feature_extractors,
    get_feature_extractor,
    register_feature_extractor,
)
from fewstep.metrics.frechet import frechet_distance, frechet_distance_from_features
from fewstep.metrics.kid import kernel_inception_distance
from fewstep.metrics.resample import bootstrap_fd, fid_infinity
from fewstep.metrics.stats import Stats, StatsAccumulator, load_stats, save_stats, stats_from_features

__all__ = [
    "FeatureExtractor",
    "Stats",
    "StatsAccumulator",
    "available_feature_extractors",
    "bootstrap_fd",
    "fid_infinity",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_feature_extractor",
    "kernel_inception_distance",
    "load_stats",
    "register_feature_extractor",
    "save_stats",
    "stats_from_features",
]
