"""Greedy generation with per-token timestamps: batched HF `generate`, or vLLM on a GPU.

Why the details matter for a token-budget sweep:
- Greedy decoding makes the output at limit B exactly the first B tokens of the output at the
  largest limit, so one generation per question serves every limit. That holds only if nothing
  else shapes the tokens: sampling is set here explicitly (greedy, repetition_penalty=1.0) and
  the checkpoint's `generation_config.json` (Qwen ships repetition_penalty=1.05, top_k, sampling)
  is never consulted. transformers fills every unset field of a passed GenerationConfig from
  `model.generation_config`, so generation runs with the model's config swapped for a blank one.
- Left padding (decoder-only models continue from the right edge) and length-sorted batches
  (little padding, and the longest batch first so an out-of-memory shows up at once).
- A StoppingCriteria that never stops records the clock after every decoding step: the time at
  which token k existed is real wall time, so the time at each token limit (paper Fig. 3) is
  measured, not extrapolated.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)

CHATML_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Generation:
    token_ids: list[int]
    """Generated ids up to and including the first stop token (if it came before the cap)."""
    token_times: list[float]
    """Seconds from the start of its batch until token k existed (same length as token_ids)."""
    finished: bool
    """Stopped by an end-of-turn token before max_new_tokens ran out."""


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (stable for equal lengths)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, the checkpoint's eos list and the ChatML end tokens
    the vocabulary has (Qwen2.5 stops on both <|im_end|> and <|endoftext|>). Stopping is not
    sampling: taking these from generation_config is right."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.extend(config_eos if isinstance(config_eos, list) else [config_eos])
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[token] for token in CHATML_END_TOKENS if token in vocab)
    if not ids:
        raise UserError("the tokenizer has no eos token: generation could never stop (set eos_token in the model dir)")
    return list(dict.fromkeys(int(i) for i in ids))


def trim_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Cut after the first stop token (padding follows it in a batch); (ids, whether it stopped)."""
    stops = set(stop_ids)
    for pos, token in enumerate(ids):
        if token in stops:
            return list(ids[:pos + 1]), True
    return list(ids), False


def decode_completion(tokenizer, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """Text of generated ids without the closing stop token. Other special tokens stay: the s1
    answer delimiter `<|im_start|>answer` is one, and grading looks for it."""
    ids = list(ids)
    if ids and ids[-1] in set(stop_ids):
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


class _TokenClock:
    """A StoppingCriteria that never stops: it stamps the time at which each new token exists."""

    def __init__(self, start: float, synchronize: bool):
        self.start = start
        self.synchronize = synchronize
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.synchronize:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _blank_generation_config(model) -> Iterator[None]:
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def greedy_config(max_new_tokens: int, stop_ids: Sequence[int], pad_id: int, min_new_tokens: int = 0):
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                            min_new_tokens=min_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id)


class HFGenerator:
    """Batched greedy `generate` of a loaded transformers model."""

    def __init__(self, model, tokenizer, batch_size: int, stop_ids: Sequence[int] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chunk_size = batch_size
        """How many prompts the sweep hands over at once (one batch here)."""
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop_ids: Sequence[int] | None = None, min_new_tokens: int = 0) -> list[Generation]:
        """Greedy continuations of token-id prompts, in input order (batched by length). `stop_ids`
        replaces the end-of-turn ids for this call (s1's thinking phase also stops at <|im_start|>);
        `min_new_tokens` forbids them for the first tokens (s1's min_tokens=1 after a "Wait")."""
        results: list[Generation | None] = [None] * len(prompts)
        for batch in length_sorted_batches([len(p) for p in prompts], self.batch_size):
            outputs = self.generate_batch([prompts[i] for i in batch], max_new_tokens, stop_ids=stop_ids,
                                          min_new_tokens=min_new_tokens)
            for index, generation in zip(batch, outputs, strict=True):
                results[index] = generation
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                       stop_ids: Sequence[int] | None = None, min_new_tokens: int = 0) -> list[Generation]:
        from transformers import StoppingCriteriaList

        stop_ids = list(stop_ids) if stop_ids is not None else self.stop_ids

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding
            input_ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        device = self.device
        clock = _TokenClock(time.perf_counter(), synchronize=device.type == "cuda")
        with _blank_generation_config(self.model):
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                generation_config=greedy_config(max_new_tokens, stop_ids, self.pad_id, min_new_tokens),
                stopping_criteria=StoppingCriteriaList([clock]),
            )
        generated = out[:, width:].tolist()
        results = []
        for ids in generated:
            ids, stopped = trim_at_stop(ids, stop_ids)
            results.append(Generation(token_ids=ids, token_times=clock.times[:len(ids)], finished=stopped))
        return results


class VLLMGenerator:
    """Greedy generation with vLLM (optional extra `vllm`, GPU), prefix caching on.

    vLLM's offline API has no per-token clock, so token k of a chunk is stamped at the chunk's
    wall time scaled by (k+1)/steps (steps = longest output in the chunk): decoding steps of a
    batch take near-equal time once the prefill is done."""

    def __init__(self, path: str, *, dtype: str, seed: int, gpu_memory_utilization: float, max_model_len: int,
                 trust_remote_code: bool = False, chunk_size: int = 512, tensor_parallel_size: int = 1):
        try:
            from vllm import LLM
        except ImportError as err:
            raise UserError("bench.backend=vllm needs the vllm extra (pip install -e '.[vllm]'); "
                            "or use bench.backend=hf") from err
        if not torch.cuda.is_available():
            raise UserError("bench.backend=vllm needs a CUDA GPU; on CPU use bench.backend=hf")
        from reasondiff.lm.models import load_tokenizer

        self.tokenizer = load_tokenizer(path)
        # generation_config="vllm": never take sampling defaults from the checkpoint
        self.llm = LLM(model=path, dtype=dtype, seed=seed, enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size,
                       trust_remote_code=trust_remote_code, generation_config="vllm")
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.chunk_size = chunk_size

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 stop_ids: Sequence[int] | None = None, min_new_tokens: int = 0) -> list[Generation]:
        from vllm import SamplingParams

        stop_ids = list(stop_ids) if stop_ids is not None else self.stop_ids
        params = SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=1.0, presence_penalty=0.0,
                                frequency_penalty=0.0, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                                stop_token_ids=stop_ids, ignore_eos=False, skip_special_tokens=False,
                                detokenize=False)
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        wall = time.perf_counter() - start
        token_lists = []
        for output in outputs:
            ids = list(output.outputs[0].token_ids)
            stop_reason = getattr(output.outputs[0], "stop_reason", None)
            # keep the stop token in the ids, as HF generate does, whichever way vLLM reports it
            if output.outputs[0].finish_reason == "stop" and isinstance(stop_reason, int) and \
                    (not ids or ids[-1] != stop_reason):
                ids.append(stop_reason)
            token_lists.append(ids)
        steps = max((len(ids) for ids in token_lists), default=1) or 1
        results = []
        for ids in token_lists:
            ids, stopped = trim_at_stop(ids, stop_ids)
            times = [wall * (k + 1) / steps for k in range(len(ids))]
            results.append(Generation(token_ids=ids, token_times=times, finished=stopped))
        return results
