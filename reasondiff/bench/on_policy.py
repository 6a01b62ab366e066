"""On-policy reasoning text: the tuned model's own bench generations, in the chat layout (issue 26.1).

Text the tuned model wrote itself, on questions it never trained on: what a fine-tune changed is
measured where the tuned model actually runs, not on someone else's traces it memorised. A bench
question may also be a fine-tune row (s1K draws on MATH, as MATH-500 does): a generation whose
question matches one the fine-tune trained on (`question_key`, whitespace-normalised, as the holdout
split keys rows) is dropped, counted and named in the text's source, which the stage records; for a
tuned model not made here, which rows it trained on is unknown, so every row of finetune.dataset counts. Each conversation is the bench's own
prompt for the tuned model (chat template, generation prompt, an opened thinking where the bench
opened it) followed by the generation at the sweep's largest token limit, closed by the EOS when
the model ended its turn. scan and analyze read it with `reasoning_text=on_policy`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from reasondiff.config import Config
from reasondiff.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class OnPolicyText:
    """Token ids of each conversation and the first token of its answer block (None: no answer)."""

    conversations: list[list[int]] = field(default_factory=list)
    answer_starts: list[int | None] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    """Tokens of each conversation's prompt (the chat template's generation prompt): where the generation starts."""
    source: str = ""
    trained_dropped: int | None = None
    """Generations left out because the fine-tune trained on their question (None: not checked, the
    fine-tune's dataset could not be read)."""


def trained_questions(cfg) -> tuple[frozenset[str] | None, str]:
    """(question_keys the tuned model may have trained on, what they are); (None, why) when the
    fine-tune's dataset cannot be read. The rows its finetune run trained on (recorded split); for a
    tuned model made elsewhere, every row of finetune.dataset."""
    from reasondiff.app.preflight import finetune_dir_of
    from reasondiff.lm.holdout import resolve_split

    finetune_dir = finetune_dir_of(cfg)
    try:
        split = resolve_split(cfg, finetune_dir)
    except UserError as err:
        return None, f"not checked against the fine-tune's rows: {err}"
    if finetune_dir is None:
        return frozenset(split.question_keys), (f"finetune.dataset={split.dataset} (tuned_model={cfg.tuned_model} "
                                                "was not made here: any row may have been trained on)")
    return split.trained_questions, f"the rows the fine-tune trained on ({split.origin})"


def _cut_middle(prompt: list[int], generated: list[int], max_length: int) -> list[int] | None:
    """The prompt whole, then as much of the generation's start as of its end."""
    room = max_length - len(prompt)
    if room < 2:
        return None
    if len(generated) <= room:
        return prompt + generated
    head = room // 2
    return prompt + generated[:head] + generated[len(generated) - (room - head):]


def on_policy_conversations(cfg: Config, tokenizer, *, n_contexts: int, context_length: int,
                            config_key: str) -> OnPolicyText:
    """Up to `n_contexts` of the tuned model's bench generations (round-robin over bench.tasks, in
    question order), each cut to `context_length` tokens by dropping the middle of the generation."""
    from reasondiff.bench.prompts import load_questions
    from reasondiff.bench.run import (
        GENERATIONS,
        GenerationLog,
        question_prompt,
        resolve_models,
        sweep_fingerprint,
    )
    from reasondiff.core import artifacts

    bench_dir = cfg.stage_dir("bench")
    if not artifacts.is_complete(bench_dir):
        raise UserError(f"{config_key}=on_policy reads the tuned model's bench generations, but no finished bench "
                        f"run is in {bench_dir}; run the bench stage first")
    specs = [s for s in resolve_models(cfg) if s.label == "tuned"]
    if not specs:
        raise UserError(f"{config_key}=on_policy needs the tuned model in bench.models (got {cfg.bench.models})")
    spec = specs[0]
    limit = max(cfg.bench.token_limits)
    fingerprints = {("tuned", task): sweep_fingerprint(cfg, spec, task) for task in cfg.bench.tasks}
    rows = GenerationLog(bench_dir / GENERATIONS).current(fingerprints=fingerprints, limits=[limit])
    by_question = {(r["task"], r["id"]): r for r in rows if r.get("completion") is not None}
    from reasondiff.lm.layouts import layout_for

    # where the tuned model's answer block opens in its own layout (s1: <|im_start|>answer, think: </think>)
    eos, delimiter = tokenizer.eos_token_id, layout_for(cfg.format, "tuned").think_close
    from reasondiff.lm.holdout import question_key

    trained, what = trained_questions(cfg)
    per_task, dropped = {}, 0
    for task in cfg.bench.tasks:
        generated = [q for q in load_questions(task, cfg.bench) if (task, q.id) in by_question]
        per_task[task] = [q for q in generated if trained is None or question_key(q.question) not in trained]
        dropped += len(generated) - len(per_task[task])
    if trained is None:
        checked = what
        log.warning("%s=on_policy: %s", config_key, what)
    else:
        checked = f"generations whose question is in {what}: {dropped} dropped"
        if dropped:
            log.warning("%s=on_policy: %d generations dropped: their question is in %s", config_key, dropped, what)
    out = OnPolicyText(source=f"tuned model's bench generations ({bench_dir / GENERATIONS}, limit {limit}, "
                              f"tasks {', '.join(cfg.bench.tasks)}; {checked})",
                       trained_dropped=None if trained is None else dropped)
    too_long = 0
    for i in range(max((len(v) for v in per_task.values()), default=0)):
        for task in cfg.bench.tasks:
            if i >= len(per_task[task]) or len(out.conversations) == n_contexts:
                continue
            question = per_task[task][i]
            row = by_question[(task, question.id)]
            prompt = question_prompt(tokenizer, question, cfg, spec)
            generated = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
            if row.get("finished") and eos is not None:
                generated.append(int(eos))
            ids = _cut_middle(prompt, generated, context_length)
            if ids is None:
                too_long += 1
                continue
            out.conversations.append(ids)
            out.answer_starts.append(_answer_token(tokenizer, ids, len(prompt), delimiter))
            out.prompt_lengths.append(len(prompt))
    if too_long:
        log.warning("%s=on_policy: %d prompts alone fill the %d-token context (skipped)", config_key, too_long,
                    context_length)
    if not out.conversations:
        raise UserError(f"{config_key}=on_policy: no tuned-model generation in {bench_dir / GENERATIONS} at limit "
                        f"{limit} for bench.tasks={cfg.bench.tasks} (re-run the bench with these settings)")
    if len(out.conversations) < n_contexts:
        log.warning("%s=on_policy: only %d generations (asked for %d)", config_key, len(out.conversations), n_contexts)
    return out


def _answer_token(tokenizer, ids: list[int], prompt_tokens: int, delimiter: str) -> int | None:
    """First token of the answer delimiter in the generation (None when the model never answered,
    or its layout has no thinking: then there is no answer block to mark)."""
    if not delimiter:
        return None
    target = tokenizer(delimiter, add_special_tokens=False)["input_ids"]
    for start in range(prompt_tokens, len(ids) - len(target) + 1):
        if ids[start:start + len(target)] == target:
            return start
    return None
