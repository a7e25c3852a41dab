"""DataLoaders that fetch whole batches from tensor-backed datasets.

``DataLoader`` calls a dataset's ``__getitems__`` with all indices of a batch when it exists.
For a :class:`~rkd.data.arrays.TensorImageDataset` this turns into one ``index_select`` and one
batched augmentation instead of ``batch_size`` per-item calls and a collate: several times
faster on CPU. Other datasets (e.g. ``torch.utils.data.Subset``) use the ordinary path.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset, Sampler


class _BatchView(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        return self.dataset.get_batch(indices, apply_transform=True)


def _identity(batch):
    return batch


def make_loader(dataset: Dataset, batch_size: int, *, sampler: Sampler | None = None, shuffle: bool = False,
                num_workers: int = 0, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """A DataLoader yielding ``(x, y)`` batches; batched fetching when the dataset supports it."""
    kw = dict(batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
              num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
              persistent_workers=num_workers > 0)
    if hasattr(dataset, "get_batch"):
        return DataLoader(_BatchView(dataset), collate_fn=_identity, **kw)
    return DataLoader(dataset, **kw)
