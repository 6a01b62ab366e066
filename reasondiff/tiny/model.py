"""The embedded default model: a small Qwen2-architecture LM built offline from generated text.

`make_tokenizer` trains a byte-level BPE with Qwen2.5's special tokens and ChatML template;
`make_model` gives a randomly initialised tiny Qwen2 (tests); `ensure_tiny_world` writes the
generated datasets and pretrains the base model for a minute or two on CPU, cached under
outputs/_tiny/ so later runs reuse it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch

from reasondiff import artifacts
from reasondiff.tiny.data import chat_exchange, general_text, s1k_row, write_tiny_datasets

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_pad|>"]
# Qwen2.5's ChatML layout (without its tool-calling branches); the system turn is optional.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def make_tokenizer(texts: list[str], vocab_size: int = 2048):
    """A byte-level BPE trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
    import random

    rng = random.Random(seed)
    texts = [general_text(rng, 12) for _ in range(n)]
    for _ in range(n // 2):
        row = s1k_row(rng)
        texts.append(row["question"] + " " + row["deepseek_thinking_trajectory"] + " " + row["deepseek_attempt"])
        texts.append(chat_exchange(rng))
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


def pretrain(model, tokenizer, texts: list[str], *, steps: int, seq_len: int = 256, batch_size: int = 16,
             lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Plain next-token pretraining on packed text; returns the loss curve."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"] + [eos])
    data = torch.tensor(ids[: (len(ids) // seq_len) * seq_len]).view(-1, seq_len)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses = []
    for step in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log.info("tiny base pretraining: step %d/%d loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def ensure_tiny_world(model_dir: str | Path, seed: int = 0, steps: int = 400) -> Path:
    """Datasets in <root>/data and a pretrained base model in `model_dir` (root = its parent)."""
    model_dir = Path(model_dir)
    root = model_dir.parent
    data_dir = root / "data"
    if not artifacts.is_complete(data_dir):
        write_tiny_datasets(data_dir, seed=seed)
        artifacts.mark_complete(data_dir)
    if artifacts.is_complete(model_dir):
        return model_dir
    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(tokenizer_training_texts(seed))
    model = make_model(tokenizer, seed=seed)
    with open(data_dir / "corpus.jsonl") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    losses = pretrain(model, tokenizer, texts, steps=steps, seed=seed)
    with artifacts.atomic_dir(model_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        artifacts.write_json(staging / "pretraining.json", {
            "steps": steps, "first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": time.perf_counter() - start})
        artifacts.mark_complete(staging)
    log.info("tiny base model built in %.0fs (loss %.2f -> %.2f): %s", time.perf_counter() - start,
             losses[0], losses[-1], model_dir)
    return model_dir
