"""The tiny world built before a stage's input checks, when `model.build_tiny` asks for it."""

from __future__ import annotations

from pathlib import Path

from reasondiff.core.errors import UserError


def prepare_tiny_world(cfg, stage: str) -> None:
    """Build the embedded tiny model and data (model.build_tiny) — only at its own place: a mistyped
    model.path must fail, not receive a freshly built tiny model. Handed in to the stage contract
    (`reasondiff.app.stage.execute(prepare=...)`) by the apps: the foundation imports no stage package."""
    if not cfg.model.build_tiny or (stage == "train" and cfg.train.data == "synthetic"):
        return
    default = Path(cfg.output_root) / "_tiny" / "base_model"
    path = Path(cfg.model.path)
    if path.absolute() != default.absolute():
        if not (path / "config.json").is_file():
            raise UserError(f"model.path={cfg.model.path}: no such model directory (model.build_tiny=true builds the "
                            f"tiny model only at {default}; set model.build_tiny=false to use another model)")
        return
    from reasondiff.tiny.model import ensure_tiny_world  # torch: only when there is something to build

    # the world is one fixed world (TinyRecipe's own seed): a run's `seed` (a seed ensemble's seed=1
    # sibling, docs/null.md) must not rebuild it — that rewrote the data and pretrained a new base model
    ensure_tiny_world(cfg.model.path, threads=cfg.hardware.cpu_threads)
    control = default.parent / "data" / "control.jsonl"
    if stage == "finetune" and Path(cfg.finetune.dataset).absolute() == control.absolute() and not control.is_file():
        from reasondiff.tiny.data import write_control_dataset
        from reasondiff.tiny.model import TinyRecipe

        recipe = TinyRecipe()  # as many rows as the reasoning fine-tune's s1k.jsonl
        write_control_dataset(control, recipe.seed, n_rows=recipe.n_s1k, chat_max_steps=recipe.chat_max_steps,
                              n_eval=recipe.n_eval)
