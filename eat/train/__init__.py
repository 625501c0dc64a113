"""Training engine shared by pretraining and fine-tuning.

``dist`` (ranks, DDP/FSDP2 wrapping, signals), ``optim`` (AdamW groups, warmup + cosine schedule),
``checkpoint`` (atomic, resumable checkpoints), ``metrics_log`` (console / TensorBoard / JSON lines),
``trainer`` (the loop) and ``flops`` (FLOPs per clip for MFU). The two workflows on top: ``pretrain``
(pretraining as a library) and ``finetune`` (with ``finetune_data``, ``layer_decay`` and ``losses``).
Import the submodules directly.
"""
