"""A named data registry: each benchmark has a name, a builder, where its files are looked for and how to get them.

``build_dataset(name, **options)`` returns an :class:`~ltcore.data.datasets.LTSplits`.
Unknown names and unknown options are errors that list what is valid.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

from ltcore.data.datasets import LTSplits


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    builder: str  # "module:function"
    how_to_get: str
    defaults: dict = field(default_factory=dict)

    def resolve(self):
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)


DATASETS = {entry.name: entry for entry in [
    DatasetEntry("fashion_mnist_lt", "Fashion-MNIST-LT (exp, ratio 100, n_max 1000): the offline default",
                 "ltcore.data.fashion_mnist:build_fashion_mnist_lt",
                 "apt-get install dataset-fashion-mnist (or set LTCORE_FASHION_MNIST)"),
    DatasetEntry("openclipart_lt", "Open Clip Art (Debian openclipart-png): 36 object folders, natural tail 97:3, "
                 "balanced test 5/class; no many group", "ltcore.data.openclipart:build_openclipart_lt",
                 "apt-get install openclipart-png (or set LTCORE_OPENCLIPART)"),
    DatasetEntry("cifar10_lt", "CIFAR-10-LT built from torchvision's CIFAR files (LDAM-DRW profile)",
                 "ltcore.data.cifar:build_cifar_lt",
                 "torchvision.datasets.CIFAR10(root, download=True) on a machine with internet",
                 {"num_classes": 10}),
    DatasetEntry("cifar100_lt", "CIFAR-100-LT built from torchvision's CIFAR files (LDAM-DRW profile)",
                 "ltcore.data.cifar:build_cifar_lt",
                 "torchvision.datasets.CIFAR100(root, download=True) on a machine with internet",
                 {"num_classes": 100}),
    DatasetEntry("imagenet_lt", "ImageNet-LT (Liu et al. 2019): OLTR split files + ImageNet images",
                 "ltcore.data.oltr:build_oltr_lt",
                 "ImageNet_LT_{train,val,test,open}.txt from the OLTR release, images from ImageNet-2012",
                 {"benchmark": "ImageNet_LT"}),
    DatasetEntry("places_lt", "Places-LT (Liu et al. 2019): OLTR split files + Places365 images",
                 "ltcore.data.oltr:build_oltr_lt",
                 "Places_LT_{train,val,test,open}.txt from the OLTR release, images from Places365-standard",
                 {"benchmark": "Places_LT"}),
    DatasetEntry("sun_lt", "SUN-LT (Liu et al. 2019): OLTR split files + SUN397 images",
                 "ltcore.data.oltr:build_oltr_lt",
                 "SUN_LT_{train,val,test}.txt from the OLTR release, images from SUN397",
                 {"benchmark": "SUN_LT"}),
    DatasetEntry("inat2018", "iNaturalist 2018 (8,142 species) from its json annotations",
                 "ltcore.data.inat:build_inat2018",
                 "train2018.json / val2018.json and the images from the iNat 2018 competition"),
]}


def build_dataset(name: str, **options) -> LTSplits:
    """Build the named benchmark; ``options`` override the builder's defaults (unknown ones are an error)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    entry = DATASETS[name]
    builder = entry.resolve()
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"dataset {name!r} has no option(s) {unknown}; valid: {', '.join(accepted)}")
    return builder(**{**entry.defaults, **options})
