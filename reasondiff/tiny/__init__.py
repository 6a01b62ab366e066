"""The embedded tiny world: a small Qwen2-architecture model and generated data, built offline.

`make_tokenizer` / `make_model` give a random tiny model for unit tests; `ensure_tiny_world` puts
the generated datasets and the pretrained tiny base model (shipped in base_model/, built by
`python -m reasondiff.tiny.build`) under outputs/_tiny/ for the `+exp=tiny` demo. Open model.py
first; data.py generates the text; prepare.py builds it for a stage (handed in by the apps).
"""

from reasondiff import lazy_exports

__getattr__ = lazy_exports(__name__, {
    **dict.fromkeys(("ensure_tiny_world", "make_config", "make_model", "make_tokenizer", "tokenizer_training_texts"),
                    "reasondiff.tiny.model"),
    "prepare_tiny_world": "reasondiff.tiny.prepare",
})
__all__ = ["ensure_tiny_world", "make_config", "make_model", "make_tokenizer", "prepare_tiny_world",
           "tokenizer_training_texts"]
