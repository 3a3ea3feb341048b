"""The model train.py builds (`from resnet import build_model`): ResNet-18/34/50 with an optional FDS
layer on the pooled features, defined in the harness (ranksim/harness/models/resnet.py)."""
from ranksim.harness.models.resnet import (
    MODELS,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_model,
    resnet18,
    resnet34,
    resnet50,
)

__all__ = ["MODELS", "BasicBlock", "Bottleneck", "ResNet", "build_model", "resnet18", "resnet34", "resnet50"]
