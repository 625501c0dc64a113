"""Training engine shared by pretraining and fine-tuning.

``dist`` (ranks, DDP/FSDP2 wrapping, signals), ``optim`` (AdamW groups, warmup + cosine schedule),
``checkpoint`` (atomic, resumable checkpoints), ``metrics_log`` (console / TensorBoard / JSON lines) and
``trainer`` (the loop). Import the submodules directly.
"""
