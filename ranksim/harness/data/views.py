"""Two augmented views per train image, for ConR and Rank-N-Contrast (ranksim.contrastive).

:class:`AugmentedViews` wraps a train :class:`~ranksim.harness.data.age.AgeCSVDataset`: every item decodes the
image once and draws two independent views of it.

ConR uses the benchmark's own train augmentation for its views and also needs the usual augmented
image for the regression loss: items are ``(image, label, weight, views)``. Rank-N-Contrast's first
stage uses only strongly augmented views (:func:`strong_view_transform`): items are ``(views, label,
weight)``. ``views`` is float32 [2, 3, s, s].
"""
from typing import Callable

import torch
from torch.utils.data import Dataset

from ranksim.harness.data.age import AgeCSVDataset


def strong_view_transform(img_size: int) -> Callable:
    """Rank-N-Contrast's view augmentation (the reference's): RandomResizedCrop(s, scale 0.2-1),
    horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale p 0.2, then the
    benchmarks' ToTensor + Normalize(0.5, 0.5). torchvision is imported here only (it costs ~2 s)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, scale=(0.2, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])


class AugmentedViews(Dataset):
    """The items of ``base`` (a train split) with two views of each image (see the module docstring).

    view_transform: PIL image -> float32 [3, s, s]; keep_image: also return ``base``'s own augmented
    image first (ConR) instead of only the views (Rank-N-Contrast stage 1).
    """

    def __init__(self, base: AgeCSVDataset, view_transform: Callable, keep_image: bool):
        self.base = base
        self.view_transform = view_transform
        self.keep_image = keep_image
        self.labels = base.labels  # shot groups, FDS and the priors read the labels of the split

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image = self.base.load_image(index)
        label = torch.tensor([self.base.labels[index]], dtype=torch.float32)
        weight = torch.tensor([self.base.weights[index]], dtype=torch.float32)
        first = self.base.transform(image) if self.keep_image else None
        views = torch.stack([self.view_transform(image), self.view_transform(image)])
        if self.keep_image:
            return first, label, weight, views
        return views, label, weight
