"""Content-addressed, lossless, checksummed cache of adversarial sets (pure torch/numpy).

Robust-KD's Stage 2 attacks the standard model once (PGD-40, Linf 8/255) and reuses the set
every epoch; this package makes that set a reproducible artefact::

    from rkd.adversarial_cache import cached_adversarial_set
    adv, labels = cached_adversarial_set("cache/adv", model, train_set,
                                         {"norm": "linf", "eps": 8/255, "steps": 40}, seed=0)

* :mod:`.key` -- :func:`cache_key` = sha256 over (state-dict hash, canonical attack JSON,
  dataset fingerprint, seed, format version); exactly what is hashed is documented there.
* :mod:`.store` -- ``<root>/<key>/{adv.npy, labels.npy, meta.json}``: float32 images stored
  exactly, SHA-256 of each file in ``meta.json`` (written last; entries appear atomically);
  :func:`load`, :func:`get_or_build`, :func:`ls`, :func:`verify`; :class:`CacheCorruptError`.
* :mod:`.build` -- :func:`build_adversarial_set` (PGD over the un-augmented data in order,
  eval mode, seeded RNG restored afterwards) and :func:`cached_adversarial_set`.
"""

from .build import (
    build_adversarial_set,
    cached_adversarial_set,
    cached_attack_set,
    pgd_attack_spec,
    run_attack_over,
    untransformed,
)
from .key import FORMAT_VERSION, cache_key, canonical_json, is_key, key_from_parts, key_parts, model_fingerprint
from .store import (
    CacheCorruptError,
    CacheIncompleteError,
    entry_dir,
    get_or_build,
    load,
    ls,
    move_aside,
    save,
    verify,
)

__all__ = [
    "FORMAT_VERSION", "cache_key", "canonical_json", "is_key", "key_from_parts", "key_parts", "model_fingerprint",
    "CacheCorruptError", "CacheIncompleteError", "entry_dir", "get_or_build", "load", "ls", "move_aside", "save",
    "verify", "build_adversarial_set", "cached_adversarial_set", "cached_attack_set", "run_attack_over",
    "pgd_attack_spec", "untransformed",
]
