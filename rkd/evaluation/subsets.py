"""The images an evaluation runs on: a deterministic prefix of the test set, and subsets of it."""

from __future__ import annotations

from torch.utils.data import Dataset, Subset


def eval_subset(dataset: Dataset, max_samples: int | None) -> Dataset:
    """The first ``max_samples`` items (deterministic), or the whole set; never augmented."""
    if hasattr(dataset, "with_transform"):
        dataset = dataset.with_transform(None)
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if hasattr(dataset, "subset"):
        return dataset.subset(range(max_samples))
    return Subset(dataset, range(max_samples))


def subset_of(data: Dataset, indices: list[int]) -> Dataset:
    """The items of ``data`` at ``indices`` (in that order)."""
    return data.subset(indices) if hasattr(data, "subset") else Subset(data, indices)
