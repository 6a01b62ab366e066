"""A stale input two stages up is seen (issue 32.1): finetune redone alone leaves the harvest, the
crosscoder trained on it and everything after them reading the OLD tuned model. A stage run alone
refuses in one line naming the first stale stage and the command that redoes the chain; the
pipeline (given the redone stage's settings) redoes exactly that chain.

The stages here are fast stand-ins (`run_stage(..., func=...)`): the contract decides what runs,
not what a stage computes.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_config

from reasondiff.app.stage import decide, run_stage
from reasondiff.core import artifacts
from reasondiff.core.errors import UserError
from reasondiff.pipeline import plan

STAGES = ("finetune", "harvest", "train", "analyze")


def fake_stages(tuned_source, calls: list[str]):
    """Stand-ins that write what the next stage's input checks look for, and log each call."""

    def finetune(cfg, ctx):
        calls.append(ctx.dir.name)
        shutil.copytree(tuned_source, ctx.dir / "model")
        return {}

    def harvest(cfg, ctx):
        calls.append(ctx.dir.name)
        artifacts.write_text(ctx.dir / "store.json", json.dumps({"d_model": 16, "shards": []}))
        return {}

    def train(cfg, ctx):
        calls.append(ctx.dir.name)
        artifacts.write_text(ctx.dir / "crosscoder.safetensors", "weights")
        artifacts.write_text(ctx.dir / "config.json", "{}")
        return {}

    def analyze(cfg, ctx):
        calls.append(ctx.dir.name)
        artifacts.write_text(ctx.dir / "report.md", "# report\n")
        return {}

    def scan(cfg, ctx):
        calls.append(ctx.dir.name)
        return {}

    def intervene(cfg, ctx):
        calls.append(ctx.dir.name)
        return {}

    return {"finetune": finetune, "harvest": harvest, "train": train, "analyze": analyze, "scan": scan,
            "intervene": intervene}


@pytest.fixture
def world(tmp_path, tiny_model_dir, tiny_tuned_model_dir, tiny_world):
    """cfg(stage, *overrides): the tiny experiment in tmp_path, its tuned model the finetune stage's output."""

    def cfg(stage, *overrides):
        return make_config("+exp=tiny", f"output_root={tmp_path}", "model.build_tiny=false",
                           f"model.path={tiny_model_dir}", f"finetune.dataset={tiny_world}/s1k.jsonl",
                           f"harvest.corpus={tiny_world}/corpus.jsonl", "harvest.reasoning_fraction=0",
                           "finetune.holdout.n_rows=0", "analyze.n_reasoning_contexts=0", "scan.n_reasoning_contexts=0",
                           "train.data=store", *overrides,
                           config_name=stage)
    return cfg


@pytest.fixture
def chain(world, tiny_tuned_model_dir):
    """finetune -> harvest -> train -> analyze finished; `calls` logs every stage function call."""
    calls: list[str] = []
    funcs = fake_stages(tiny_tuned_model_dir, calls)
    for stage in STAGES:
        run_stage(world(stage), func=funcs[stage])
    assert calls == list(STAGES)
    calls.clear()
    return funcs, calls


def test_a_stage_run_alone_refuses_when_its_input_read_a_redone_stage(world, chain, tmp_path):
    funcs, calls = chain
    exp = tmp_path / "tiny"
    crosscoder = (exp / "train" / "crosscoder.safetensors").read_bytes()
    # the reproduction: finetune redone alone with another learning rate
    run_stage(world("finetune", "overwrite=true", "finetune.learning_rate=1e-3"), func=funcs["finetune"])
    assert calls == ["finetune"]

    # train alone: its harvest read the OLD tuned model. Before the fix: "already complete ... same settings"
    with pytest.raises(UserError) as refused:
        run_stage(world("train"), func=funcs["train"])
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("train: tiny/harvest is stale: tiny/finetune was redone after it was read")
    assert "python -m reasondiff.pipeline" in message and "finetune.learning_rate=0.001" in message
    assert "finetune.learning_rate=0.001 overwrite" not in message  # the pipeline redoes only the stale chain

    # analyze alone: before the fix it redid itself with the crosscoder of the old tuned model
    with pytest.raises(UserError, match=r"^analyze: tiny/harvest is stale: tiny/finetune was redone"):
        run_stage(world("analyze"), func=funcs["analyze"])
    # scan alone reads the stale harvest for its held-out text
    with pytest.raises(UserError, match=r"^scan: tiny/harvest is stale"):
        run_stage(world("scan"), func=funcs["scan"])
    # a new crosscoder on the stale harvest is refused too (nothing there yet, or overwrite=true)
    with pytest.raises(UserError, match=r"^train: tiny/harvest is stale"):
        run_stage(world("train", "overwrite=true"), func=funcs["train"])
    assert calls == ["finetune"]  # nothing else ran
    assert (exp / "train" / "crosscoder.safetensors").read_bytes() == crosscoder
    assert artifacts.is_complete(exp / "train") and artifacts.is_complete(exp / "analyze")


def test_the_pipeline_with_the_redone_stages_settings_redoes_the_stale_chain(world, chain):
    funcs, calls = chain
    run_stage(world("finetune", "overwrite=true", "finetune.learning_rate=1e-3"), func=funcs["finetune"])
    planned = dict(plan(world("pipeline", "finetune.learning_rate=1e-3"), STAGES))
    assert {s: d.action for s, d in planned.items()} == {"finetune": "skip", "harvest": "redo", "train": "redo",
                                                         "analyze": "redo"}
    # without the redone stage's setting the pipeline refuses, saying to pass it (issue 32.4)
    with pytest.raises(UserError) as refused:
        plan(world("pipeline"), STAGES)
    assert "pass the same finetune.learning_rate=0.001 to the pipeline" in str(refused.value)


def test_redoing_the_chain_stage_by_stage_clears_the_refusal(world, chain):
    funcs, calls = chain
    run_stage(world("finetune", "overwrite=true", "finetune.learning_rate=1e-3"), func=funcs["finetune"])
    run_stage(world("harvest"), func=funcs["harvest"])  # its own input was redone: stale, redone
    assert decide(world("train"), "train").action == "redo"
    run_stage(world("train"), func=funcs["train"])
    run_stage(world("analyze"), func=funcs["analyze"])
    assert calls == ["finetune", "harvest", "train", "analyze"]
    assert decide(world("analyze"), "analyze").action == "skip"


def test_a_harvest_whose_tuned_model_is_gone_is_not_called_stale(world, chain, tmp_path):
    """Deleting a finished model to save space replaces nothing: what read it stays consistent."""
    funcs, calls = chain
    shutil.rmtree(tmp_path / "tiny" / "finetune")
    assert decide(world("train"), "train").action == "skip"


def test_a_stale_chain_is_seen_when_the_stage_between_was_deleted(world, chain, tmp_path):
    """Activation stores are large and get deleted after training: the crosscoder's recorded lineage
    still says which fine-tune its activations came from."""
    funcs, calls = chain
    exp = tmp_path / "tiny"
    assert artifacts.read_json(exp / "train" / "fingerprint.json")["lineage"].keys() == {"tiny/finetune"}
    shutil.rmtree(exp / "harvest")
    run_stage(world("finetune", "overwrite=true", "finetune.learning_rate=1e-3"), func=funcs["finetune"])
    with pytest.raises(UserError, match=r"^analyze: tiny/train is stale: tiny/finetune was redone after it was read"):
        run_stage(world("analyze"), func=funcs["analyze"])
    assert calls == ["finetune"]
