"""The embedded tiny world: a small Qwen2-architecture model and generated data, built offline.

`make_tokenizer` / `make_model` give a random tiny model for unit tests; `ensure_tiny_world` puts
the generated datasets and the pretrained tiny base model (shipped in base_model/, built by
`python -m reasondiff.tiny.build`) under outputs/_tiny/ for the `+exp=tiny` demo. Open model.py
first; data.py generates the text.
"""

from reasondiff.tiny.model import (
    ensure_tiny_world,
    make_config,
    make_model,
    make_tokenizer,
    tokenizer_training_texts,
)

__all__ = ["ensure_tiny_world", "make_config", "make_model", "make_tokenizer", "tokenizer_training_texts"]
