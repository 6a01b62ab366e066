"""Shared fixtures: a tiny Qwen2 model + ChatML tokenizer built in-process, real data slices, configs."""

from __future__ import annotations

import copy
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from reasondiff.app.stage import CONF_DIR
from reasondiff.config import Config, to_config

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SUBPROCESS_HOME = Path(tempfile.mkdtemp(prefix="reasondiff-test-home-"))
"""HOME of the apps tests start as subprocesses: caches (matplotlib, HF) never land in the repo."""


def app_env(**extra: str) -> dict[str, str]:
    """A minimal, offline environment for running an app in a subprocess from the repo root."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "HOME": str(SUBPROCESS_HOME),
            "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the real data slices in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from reasondiff.tiny import make_tokenizer, tokenizer_training_texts

    return make_tokenizer(tokenizer_training_texts(seed=0, n=200))


@pytest.fixture(scope="session")
def _tiny_model_session(tiny_tokenizer):
    from reasondiff.tiny import make_model

    return make_model(tiny_tokenizer, seed=0)


@pytest.fixture
def tiny_model(_tiny_model_session):
    """A randomly initialised tiny Qwen2 (4 layers, d_model 128), deep-copied per test."""
    return copy.deepcopy(_tiny_model_session)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, _tiny_model_session, tiny_tokenizer) -> Path:
    """The same tiny model saved as an HF directory (what `model.path` points at)."""
    path = tmp_path_factory.mktemp("tiny_model")
    _tiny_model_session.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tuned_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A second tiny model with the same shape and tokenizer but other weights (a stand-in 'tuned')."""
    from reasondiff.tiny import make_model

    path = tmp_path_factory.mktemp("tiny_tuned_model")
    make_model(tiny_tokenizer, seed=1).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """Generated tiny datasets (corpus, s1k, gsm8k, math500, boolq jsonl) in one folder."""
    from reasondiff.tiny.data import write_tiny_datasets

    path = tmp_path_factory.mktemp("tiny_data")
    write_tiny_datasets(path, seed=0, n_corpus=300, n_s1k=40, n_eval=12)
    return path


def make_config(*overrides: str, config_name: str = "train") -> Config:
    """Compose an app's config exactly as the CLI would (run=a=b quoted as the CLI does), then validate it."""
    from reasondiff.app.cli import quote_run_values

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name=config_name, overrides=quote_run_values(list(overrides))))


def model_leaning_crosscoder(out_dir: Path, n_latents: int, shrink: float) -> Path:
    """A seeded crosscoder at the tiny model's width (d_model 128), saved in the train stage's format into
    `out_dir`: latents 0-39 lean to the tuned model and 40-79 to the base one (their decoder vectors in the
    other model scaled by `shrink`), the encoder is the decoder's transpose × 3 with a small negative bias (a
    sparse code), and the scaling factors are != 1 (a stage that forgot to undo them would show). What the
    analyze and intervene stage tests run on."""
    from reasondiff.crosscoder.model import CrossCoder, CrossCoderConfig

    torch.manual_seed(0)
    cc = CrossCoder(CrossCoderConfig(d_model=128, n_latents=n_latents, dec_init_norm=0.3))
    with torch.no_grad():
        cc.W_dec[:40, 0] *= shrink   # tuned-leaning
        cc.W_dec[40:80, 1] *= shrink  # base-leaning
        cc.W_enc.copy_(cc.W_dec.permute(1, 2, 0) * 3)
        cc.b_enc.fill_(-0.05)
        cc.scaling_factors.copy_(torch.tensor([2.0, 0.5]))
    return cc.save(out_dir)


TINY_PAIR_EXP = "_tiny_pair"
"""outputs/<this>/finetune/ holds the tuned half of `trained_tiny_pair` between test runs."""


@pytest.fixture(scope="session")
def trained_tiny_pair() -> tuple[Path, Path]:
    """(base_dir, tuned_dir): the tiny world's pretrained base model (reasondiff.tiny, cached in
    outputs/_tiny/ like the demo's) and its fine-tune in the s1 layout (the finetune stage with
    +exp=tiny, in outputs/_tiny_pair/finetune/). Built on first use, then reused across runs: the
    stage skips a finished run with the same settings and base model (delete the folders to rebuild).
    Unlike the random tiny models, these stop at different lengths and write answers."""
    from reasondiff.app.stage import run_stage
    from reasondiff.tiny import ensure_tiny_world

    output_root = REPO / "outputs"
    base = ensure_tiny_world(output_root / "_tiny" / "base_model")
    cfg = make_config("+exp=tiny", f"output_root={output_root}", f"exp_name={TINY_PAIR_EXP}", f"model.path={base}",
                      "wandb.mode=disabled", config_name="finetune")
    tuned = run_stage(cfg) / "model"
    return base, tuned
