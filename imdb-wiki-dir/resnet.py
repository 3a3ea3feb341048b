"""The paper's module name for the model: `from resnet import resnet50` (defined in ranksim.harness.models.resnet)."""
from ranksim.harness.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]
