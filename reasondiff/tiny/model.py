"""The embedded default model: a small Qwen2-architecture LM built offline from generated text.

`make_tokenizer` trains a byte-level BPE with Qwen2.5's pre-tokenizer (digits one by one), special
tokens and ChatML template; `make_model` gives a randomly initialised tiny Qwen2 (tests);
`ensure_tiny_world` writes the generated datasets under outputs/_tiny/ and puts the base model there:
the copy shipped in reasondiff/tiny/base_model/ when it was built by the same `TinyRecipe`, else a
fresh pretraining (1500 steps, ~18 min on one core of a 2-core CPU; docs/tiny.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from reasondiff.core import artifacts
from reasondiff.core.progress import Progress
from reasondiff.tiny import data as tiny_data
from reasondiff.tiny.data import ProblemSource, base_training_text, general_text, write_tiny_datasets

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>"]
# Qwen2.5's ChatML layout (without its tool-calling branches); the system turn is optional.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2's pre-tokenizer split (its tokenizer.json): every digit is a token of its own, so every
# step of the tiny world's traces (`3+4=7.`) has the same few tokens.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BUILD_FILE = "tiny_build.json"
SHIPPED_BASE = Path(__file__).with_name("base_model")
"""The tiny base model built from `TinyRecipe()`, shipped with the package: building it takes about
20 CPU-minutes, copying it a second, so a fresh clone's demo and the test suite start at once.
`python -m reasondiff.tiny.build` rebuilds it (a test fails when the recipe changes without it)."""


@dataclass(frozen=True)
class TinyRecipe:
    """Everything the cached tiny world depends on; a cache built from another recipe is rebuilt."""

    version: int = 6
    """Bumped whenever the generated text or the training code changes what gets built."""
    seed: int = 0
    n_corpus: int = 20000
    """Pretraining documents (about 3.5M tokens): mostly worked solutions, some chat turns answered
    directly, drills of the one-step facts and prose."""
    chat_share: float = tiny_data.CHAT_SHARE
    chat_max_steps: int | None = tiny_data.CHAT_MAX_STEPS
    instructed_share: float = tiny_data.INSTRUCTED_SHARE
    n_s1k: int = 400
    n_eval: int = 100
    """Held-out bench questions per task."""
    vocab_size: int = 1024
    hidden_size: int = 128
    n_layers: int = 4
    intermediate_size: int = 512
    steps: int = 1500
    """The lookup of a day's change in the question is learnt between steps 500 and 1000 (held-out
    worked-solution accuracy 15% at 500, 75% at 1000, 92% at 1500: docs/tiny.md)."""
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 3e-3

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict:
        """What a build writes to tiny_build.json: the fingerprint and the recipe behind it."""
        return {"fingerprint": self.fingerprint(), "recipe": dataclasses.asdict(self)}


def make_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|fim_pad|>"], model_max_length=4096,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tokenizer_training_texts(seed: int = 0, n: int = 400) -> list[str]:
    """Text of every kind the tiny world holds (prose, worked solutions, chat turns, s1 layout), in a
    fixed mix: the corpus shares of the recipe do not move the vocabulary."""
    rng = random.Random(seed)
    source = ProblemSource(rng, set())
    texts = [general_text(rng, 12) for _ in range(n // 2)]
    texts += [base_training_text(rng, source, chat_share=0.12, chat_max_steps=None, instructed_share=0.0)
              for _ in range(n)]
    texts += ["<|im_start|>think\n<|im_start|>answer\nAnswer: Final Answer:"]
    return texts


def make_config(vocab_size: int, *, hidden_size: int = 128, n_layers: int = 4, n_heads: int = 4,
                n_kv_heads: int = 2, intermediate_size: int = 384, max_positions: int = 2048):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, rms_norm_eps=1e-6,
        rope_theta=10000.0, bos_token_id=None, eos_token_id=2, pad_token_id=0,
    )


def make_model(tokenizer, seed: int = 0, **shape):
    """A randomly initialised tiny Qwen2 for unit tests (seconds, no training)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = make_config(len(tokenizer), **shape)
    cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = tokenizer.pad_token_id
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model.eval()


def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Documents joined by <|endoftext|> and cut into rows of `seq_len` tokens."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for encoded in tokenizer(texts)["input_ids"]:
        ids.extend(encoded + [eos])
    return torch.tensor(ids[: (len(ids) // seq_len) * seq_len]).view(-1, seq_len)


def pretrain(model, data: torch.Tensor, *, steps: int, batch_size: int = 16, lr: float = 3e-3,
             seed: int = 0) -> list[float]:
    """Plain next-token pretraining on packed rows (warm-up, cosine decay); returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses = []
    with Progress(total=steps, desc="tiny base pretraining", unit="step", dynamic_ncols=True) as bar:
        for _ in range(steps):
            batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update()
    model.eval()
    return losses


def write_recipe_datasets(directory: Path, recipe: TinyRecipe) -> None:
    write_tiny_datasets(directory, seed=recipe.seed, n_corpus=recipe.n_corpus, n_s1k=recipe.n_s1k,
                        n_eval=recipe.n_eval, chat_share=recipe.chat_share, chat_max_steps=recipe.chat_max_steps,
                        instructed_share=recipe.instructed_share)


def _built_with(directory: Path, recipe: TinyRecipe) -> bool:
    path = directory / BUILD_FILE
    return artifacts.is_complete(directory) and path.is_file() and \
        artifacts.read_json(path).get("fingerprint") == recipe.fingerprint()


def ensure_tiny_world(model_dir: str | Path, seed: int = 0, recipe: TinyRecipe | None = None,
                      threads: int | None = None) -> Path:
    """Datasets in <root>/data and a pretrained base model in `model_dir` (root = its parent).

    Built once and reused; a cache built by another recipe (an older version of this code) is
    rebuilt. Concurrent callers (a test session beside `make demo`) wait for one build. `threads`
    (hardware.cpu_threads) sets torch's intra-op threads for the build."""
    from filelock import FileLock

    recipe = recipe or TinyRecipe(seed=seed)
    model_dir = Path(model_dir)
    root = model_dir.parent
    data_dir = root / "data"
    if _built_with(data_dir, recipe) and _built_with(model_dir, recipe):
        return model_dir
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".tiny_build.lock")):
        build = recipe.record()
        if not _built_with(data_dir, recipe):
            if data_dir.exists():
                log.info("tiny world data in %s was made by another recipe; regenerating it", data_dir)
            with artifacts.atomic_dir(data_dir) as staging:
                write_recipe_datasets(staging, recipe)
                artifacts.write_json(staging / BUILD_FILE, build)
                artifacts.mark_complete(staging)
        if _built_with(model_dir, recipe):
            return model_dir
        if model_dir.exists():
            log.info("the cached tiny base model in %s was built by another recipe; replacing it", model_dir)
        if _built_with(SHIPPED_BASE, recipe):
            with artifacts.atomic_dir(model_dir) as staging:
                shutil.copytree(SHIPPED_BASE, staging, dirs_exist_ok=True)
            log.info("tiny base model: the build shipped with reasondiff (%s), cached at %s", SHIPPED_BASE, model_dir)
            return model_dir
        if threads:
            torch.set_num_threads(threads)
        log.info("building the tiny base model once (%d pretraining steps, %d torch threads); later runs and "
                 "the test suite reuse it from %s", recipe.steps, torch.get_num_threads(), model_dir)
        start = time.perf_counter()
        build_base_model(model_dir, data_dir, recipe, build)
        log.info("tiny base model built in %.0f s and cached at %s (`make clean-tiny` removes it)",
                 time.perf_counter() - start, model_dir)
    return model_dir


def build_base_model(model_dir: Path, data_dir: Path, recipe: TinyRecipe, build: dict) -> None:
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tokenizer = make_tokenizer(tokenizer_training_texts(recipe.seed), vocab_size=recipe.vocab_size)
    model = make_model(tokenizer, seed=recipe.seed, hidden_size=recipe.hidden_size, n_layers=recipe.n_layers,
                       intermediate_size=recipe.intermediate_size)
    with open(data_dir / "corpus.jsonl") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    data = pack(tokenizer, texts, recipe.seq_len)
    losses = pretrain(model, data, steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed)
    with artifacts.atomic_dir(model_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        tail = losses[-20:]
        artifacts.write_json(staging / "pretraining.json", {
            "steps": recipe.steps, "tokens": recipe.steps * recipe.batch_size * recipe.seq_len,
            "corpus_tokens": data.numel(), "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
            "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads()})
        artifacts.write_json(staging / BUILD_FILE, build)
        artifacts.mark_complete(staging)
