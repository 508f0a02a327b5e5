"""Generators: the registry (one :class:`GeneratorSpec` per model), generator folders, and the models.

Each model is a package here (``jdm/``, ``siamese/``) with ``presets``, ``model``, ``objective`` and
``sampling``; all of them sample through :mod:`nnaug.generators.reverse_process`.
"""
from nnaug.generators.folder import checkpoint_sha256, find_latest_generator, load_generator, read_info
from nnaug.generators.registry import (GeneratorSpec, SampleableGenerator, TrainableGenerator, generator_names,
                                       get_spec, register, unregister)

__all__ = ["GeneratorSpec", "SampleableGenerator", "TrainableGenerator", "checkpoint_sha256", "find_latest_generator",
           "generator_names", "get_spec", "load_generator", "read_info", "register", "unregister"]
