"""Data: clip manifests and labels, datasets with a bad-file policy, resumable samplers and loaders."""
