"""train.compile=true with train.precision=bf16 on CPU (inductor): a few pretraining and fine-tuning steps agree with
the eager run, checkpoint and resume, and a compiled run's checkpoint loads and continues uncompiled.

Tolerance: bf16 autocast rounds every product's inputs to 8 bits of mantissa (relative step 2^-8 = 0.4 %); inductor
fuses and reorders the element-wise work around them, so losses of the compiled and the eager step differ by
rounding only. Measured over 4 steps (outputs of ``tests/test_compile_bf16.py``'s helpers, torch 2.11 CPU): largest
relative difference 7.9e-4 (pretraining), 4.9e-4 (fine-tuning); we require ``rtol = 5e-3``. The model is a 1-block,
64-frame EAT (compiling is the slow part: ~60 s on one core for the pretraining step's graphs, cached afterwards).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from eat.apps.bench_common import RepeatBatch
from eat.audio.augment import AugmentConfig
from eat.audio.fbank import FrontendConfig
from eat.model.classifier import Classifier, PatchoutConfig, classifier_config
from eat.model.eat import EATModel, eat_config
from eat.model.masking import inverse_block_mask
from eat.train.dist import DistEnv
from eat.train.finetune import BatchPrep, FinetuneModel, LossSection
from eat.train.layer_decay import finetune_param_groups
from eat.train.optim import OptimConfig, param_groups
from eat.train.pretrain import PretrainBatchPrep
from eat.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow  # inductor compiles on CPU: ~1 min per test on an idle 2-core machine
RTOL = 5e-3
ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
FRAMES = 64


def _eat_cfg():
    cfg = eat_config("tiny")
    enc = dataclasses.replace(cfg.encoder, depth=1, target_length=FRAMES)
    return dataclasses.replace(cfg, encoder=enc, decoder_layers=1, average_top_k_layers=1, clone_batch=2)


def _train_cfg(out: Path, compile: bool, resume: str = "none") -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=4, device="cpu", precision="bf16", compile=compile, seed=3,
                       resume=resume, tensorboard=False, check_weights=False, log_every=10**6, save_every=0)


def _pretrain_trainer(out: Path, compile: bool, resume: str = "none") -> Trainer:
    cfg = _eat_cfg()
    torch.manual_seed(0)
    model = EATModel(cfg)
    g = torch.Generator().manual_seed(1)
    batch = {"source": torch.randn(2, FRAMES, 128, generator=g), "num_skipped": 0,
             "mask": inverse_block_mask(2 * cfg.clone_batch, model.student.grid(FRAMES), cfg.mask_ratio,
                                        cfg.mask_block, cfg.mask_adjust, generator=g)}
    optim = OptimConfig(lr=1e-3, warmup_steps=1)
    return Trainer(model, RepeatBatch(batch), _train_cfg(out, compile, resume), optim, ENV,
                   lambda m: param_groups(m, 0.05, True, model.no_weight_decay()),
                   prepare=PretrainBatchPrep(FrontendConfig(target_length=FRAMES)))


def _finetune_trainer(out: Path, compile: bool, resume: str = "none") -> Trainer:
    # drop path off: its draws inside a compiled block come from inductor's generator, not the eager one
    cfg = classifier_config("tiny", 5, FRAMES, drop_path=0.0, patchout=PatchoutConfig(s_t=1, s_f=1))
    cfg = dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, depth=1))
    torch.manual_seed(0)
    classifier = Classifier(cfg)
    aug = AugmentConfig(spec_mixup_prob=1.0, spec_mixup_alpha=0.8, freq_mask=20, time_mask=10)
    model = FinetuneModel(classifier, aug, LossSection(), multi_label=False, seed=1)
    g = torch.Generator().manual_seed(1)
    batch = {"source": torch.randn(4, FRAMES, 128, generator=g), "target": torch.tensor([0, 1, 2, 3]),
             "index": torch.arange(4), "num_skipped": 0}
    prep = BatchPrep(FrontendConfig(target_length=FRAMES), aug, 5, soft_targets=True, seed=1)
    groups = lambda m: finetune_param_groups(m, weight_decay=0.05, layer_decay=0.65, depth=1)  # noqa: E731
    return Trainer(model, RepeatBatch(batch), _train_cfg(out, compile, resume), OptimConfig(lr=1e-3, warmup_steps=1),
                   ENV, groups, prepare=prep)


def _losses(trainer: Trainer, steps: int) -> list[float]:
    batches = trainer.batches()
    return [float(trainer.train_step(next(batches))["loss"]) for _ in range(steps)]


@pytest.mark.parametrize("build", [_pretrain_trainer, _finetune_trainer], ids=["pretrain", "finetune"])
def test_compiled_bf16_matches_eager_and_resumes_uncompiled(tmp_path, build):
    eager = _losses(build(tmp_path / "eager", compile=False), 4)

    compiled = build(tmp_path / "compiled", compile=True)
    first = _losses(compiled, 2)
    saved = compiled.save()  # a compiled run's checkpoint ...
    rest = _losses(compiled, 2)
    assert all(torch.isfinite(torch.tensor(first + rest)))
    print(f"largest relative difference compiled vs eager: "  # shown with pytest -s
          f"{max(abs(a - b) / abs(b) for a, b in zip(first + rest, eager, strict=True)):.2e}")
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(eager), rtol=RTOL, atol=0.0)

    names = set(compiled.module.state_dict())
    assert not any("_orig_mod" in n for n in names)  # regional compile keeps the state-dict names

    resumed = build(tmp_path / "resumed", compile=False, resume=str(saved))  # ... loads uncompiled
    assert resumed.step == 2 and set(resumed.module.state_dict()) == names
    torch.testing.assert_close(torch.tensor(_losses(resumed, 2)), torch.tensor(rest), rtol=RTOL, atol=0.0)
