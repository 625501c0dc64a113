"""Data: clip manifests and labels, datasets with a bad-file policy, resumable samplers and loaders."""

from eat.data.batch import Batch, model_input
from eat.data.datasets import (
    LabelledDataset,
    MaskConfig,
    PretrainDataset,
    Skipped,
    fixed_length_wave,
    sample_generator,
    wave_length,
)
from eat.data.loaders import (
    BadDataError,
    ResumableDistributedSampler,
    SkippingLoader,
    WeightedSampler,
    build_loader,
    class_balanced_weights,
    collate,
)
from eat.data.manifest import (
    LabelledItem,
    LabelSet,
    Manifest,
    ManifestError,
    read_ast_json,
    read_class_csv,
    read_eat_labels,
    read_esc50,
    read_manifest,
    read_path_label_csv,
    write_manifest,
)

__all__ = [
    "BadDataError",
    "Batch",
    "LabelSet",
    "LabelledDataset",
    "LabelledItem",
    "Manifest",
    "ManifestError",
    "MaskConfig",
    "PretrainDataset",
    "ResumableDistributedSampler",
    "Skipped",
    "SkippingLoader",
    "WeightedSampler",
    "build_loader",
    "class_balanced_weights",
    "collate",
    "fixed_length_wave",
    "model_input",
    "read_ast_json",
    "read_class_csv",
    "read_eat_labels",
    "read_esc50",
    "read_manifest",
    "read_path_label_csv",
    "sample_generator",
    "wave_length",
    "write_manifest",
]
