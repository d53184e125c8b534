"""What training reads a feature store through: the manifest checked against the model, shards with
their sample counts (to split over workers without listing), samples in order, one view per visit.

    store = FeatureStore.open("s3://bucket/features/3f2a...", vl_width=768, ib_width=1024)
    store.register_run("vl_stage1_7b", {"run_dir": ...})     # so `vllama features gc` keeps it
    for index, count in store.shards("webvid"): ...
    for sample in store.samples("webvid", [0, 1]):
        vl, ibv = store.view(sample, rng)                     # (T, 32, H), (T, D) of one random view
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.features import format as fmt
from pipelines.features import store as st
from pipelines.storage import StorageConfig


@dataclass(frozen=True)
class FeatureStore:
    uri: str
    manifest: dict
    storage: StorageConfig | None = None

    @classmethod
    def open(
        cls, uri: str, vl_width: int | None = None, ib_width: int | None = None, storage: StorageConfig | None = None
    ) -> FeatureStore:
        """Read the manifest; with widths given, fail now if the features do not fit the model."""
        manifest = fmt.read_manifest(uri, storage)
        dims = manifest["dims"]
        for name, want in (("vl_width", vl_width), ("ib_width", ib_width)):
            if want is not None and dims[name] != want:
                raise ValueError(
                    f"{uri}: features have {name}={dims[name]}, the model expects {want}; extract a store with the "
                    f"encoders of this model size (encoders.image / encoders.imagebind) or pick its store"
                )
        return cls(uri, manifest, storage)

    @property
    def views(self) -> int:
        return self.manifest["dims"]["views"]

    @property
    def datasets(self) -> list[str]:
        return sorted(self.manifest.get("datasets", {}))

    def shards(self, dataset: str) -> list[tuple[int, int]]:
        """(shard index, samples written) of every complete shard of `dataset`, from the manifest."""
        if dataset not in self.manifest.get("datasets", {}):
            raise KeyError(f"{self.uri}: no dataset {dataset!r}; it has {', '.join(self.datasets) or 'none'}")
        return [(int(name), s["ok"]) for name, s in sorted(self.manifest["datasets"][dataset]["shards"].items())]

    def samples(self, dataset: str, shards: Sequence[int] | None = None) -> Iterator[fmt.FeatureSample]:
        """Samples of the given shards (default: all), in shard order and within a shard in key order."""
        for index in shards if shards is not None else [i for i, _ in self.shards(dataset)]:
            yield from fmt.iter_shard(fmt.shard_uri(self.uri, dataset, index), self.storage)

    def view(self, sample: fmt.FeatureSample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One of the sample's V views, drawn uniformly: (T, 32, H) VL features and (T, D) ImageBind vision."""
        v = int(rng.integers(sample.views))
        return sample.vl[v], sample.ibv[v]

    def register_run(self, run: str, info: dict) -> None:
        st.register_run(self.uri, run, info, self.storage)
