"""Text for harvesting: documents from a corpus, s1K reasoning traces, packed into token contexts.

Packing (recorded in the store manifest as `packing`): every document is tokenised on its own
(no special tokens added), followed by the document separator `<|endoftext|>` (Qwen's pretraining
separator; the tokenizer's EOS when it has none), and the concatenated stream is cut into windows
of exactly `context_length` tokens — a document may continue into the next window, and no window
is padded. The position of the stream is a `PackerState` (documents consumed, tokens of the next
document already used), so a harvest resumes exactly where a shard ended, and `documents_used`
(every document any context touched) makes held-out text disjoint from the harvested text by
construction.

Mixing: with `reasoning_fraction` f, context i comes from the reasoning corpus exactly when
floor((i+1)·f) > floor(i·f) — a deterministic interleaving with exactly that fraction.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from reasondiff.config import HarvestConfig
from reasondiff.core.errors import UserError
from reasondiff.lm.data_sources import load_rows, require_fields

log = logging.getLogger(__name__)

DOCUMENT_SEPARATOR = "<|endoftext|>"
REASONING_FIELDS = ("question", "deepseek_thinking_trajectory", "deepseek_attempt")
_TOKENIZE_CHUNK = 64  # documents per batched tokenizer call (fast tokenizers parallelise a batch)


# --- documents -----------------------------------------------------------------------------------
def iter_texts(source: str, *, split: str = "train", text_column: str = "text", config_name: str | None = None,
               config_key: str = "harvest.corpus", skip: int = 0) -> Iterator[str]:
    """Documents of a hub dataset (streamed, never fully downloaded) or a local file, in order.
    `skip` documents are passed over first (empty documents count: positions are row indices)."""
    rows = load_rows(source, split=split, config_name=config_name, streaming=True, config_key=config_key,
                     fields=[text_column])
    for index, row in enumerate(itertools.islice(rows, skip, None), start=skip):
        if index == skip:
            require_fields(row, [text_column], index=index, source=f"{config_key}={source}")
        text = row.get(text_column)
        yield text if isinstance(text, str) else ""


def reasoning_text(row: dict) -> str:
    """One s1K-1.1 row as plain text: question, DeepSeek thinking trace, final attempt."""
    return "\n\n".join(row[f].strip() for f in REASONING_FIELDS)


def reasoning_texts(source: str, *, split: str = "train", config_key: str = "harvest.reasoning_corpus",
                    skip: int = 0, exclude_questions: frozenset[str] = frozenset()) -> Iterator[str]:
    """s1K-style rows (hub id or local file) as question + thinking trace + attempt text. A row whose
    question is in `exclude_questions` (reasondiff.lm.holdout.question_key) reads as an empty
    document, so row positions (the resume state) stay row indices."""
    from reasondiff.lm.holdout import question_key

    rows = load_rows(source, split=split, streaming=True, config_key=config_key, fields=REASONING_FIELDS)
    for index, row in enumerate(itertools.islice(rows, skip, None), start=skip):
        require_fields(row, REASONING_FIELDS, index=index, source=f"{config_key}={source}")
        yield "" if exclude_questions and question_key(row["question"]) in exclude_questions else reasoning_text(row)


def separator_id(tokenizer) -> int:
    token_id = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
    # an unknown token maps to unk_token_id, which may be any id: check that it round-trips
    if isinstance(token_id, int) and token_id >= 0 and tokenizer.convert_ids_to_tokens(token_id) == DOCUMENT_SEPARATOR:
        return token_id
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has neither <|endoftext|> nor an EOS token to separate documents")
    return int(tokenizer.eos_token_id)


# --- packing -------------------------------------------------------------------------------------
@dataclass
class PackerState:
    """Where a packed stream stands: the next context starts at token `offset` of document `documents`."""

    documents: int = 0
    offset: int = 0
    passes: int = 0
    """Completed passes over the corpus (only a cycling packer starts over)."""


class Packer:
    """Fixed-length token contexts from a stream of documents, resumable from a `PackerState`.

    `open_texts(skip)` must return the documents from row `skip` on; a cycling packer reopens it
    at 0 when the corpus ends (the reasoning mix, the live source), a non-cycling one stops."""

    def __init__(self, open_texts, tokenizer, context_length: int, *, state: PackerState | None = None,
                 cycle: bool = False, name: str = "corpus") -> None:
        self.open_texts, self.tokenizer, self.context_length = open_texts, tokenizer, context_length
        self.separator = separator_id(tokenizer)
        self.cycle, self.name = cycle, name
        self.state = PackerState(**asdict(state)) if state else PackerState()
        self.documents_touched = self.state.documents + (1 if self.state.offset else 0)
        """Documents of the first pass of which at least one token was emitted (held-out text starts after them)."""
        self._docs: Iterator[tuple[int, list[int], int]] | None = None
        self._current: tuple[int, list[int]] | None = None
        self._position = 0
        self._next_index = self.state.documents

    def _documents(self) -> Iterator[tuple[int, list[int]]]:
        """(row index, token ids + separator, first unused token) from the state's position on;
        (-1, [], 0) ends a pass of a cycling packer."""
        skip, first_offset = self.state.documents, self.state.offset
        while True:
            produced = False
            index = skip
            for chunk in _chunks(self.open_texts(skip), _TOKENIZE_CHUNK):
                for doc in self.tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]:
                    if doc:
                        produced = True
                        yield index, [*doc, self.separator], first_offset
                    first_offset = 0
                    index += 1
            if not self.cycle:
                return
            if not produced and skip == 0:
                raise UserError(f"{self.name}: the corpus has no non-empty documents")
            skip = 0
            yield -1, [], 0

    def next_context(self) -> list[int] | None:
        """The next `context_length` token ids, or None once a non-cycling corpus is exhausted
        (its final partial window is dropped: contexts are never padded)."""
        if self._docs is None:
            self._docs = self._documents()
        context: list[int] = []
        while len(context) < self.context_length:
            if self._current is None:
                nxt = next(self._docs, None)
                if nxt is None:
                    return None
                if nxt[0] == -1:
                    self.state.passes += 1
                    self._next_index = 0
                    continue
                self._current, self._position = (nxt[0], nxt[1]), nxt[2]
            index, tokens = self._current
            take = min(self.context_length - len(context), len(tokens) - self._position)
            context.extend(tokens[self._position:self._position + take])
            self._position += take
            if self.state.passes == 0:
                self.documents_touched = max(self.documents_touched, index + 1)
            if self._position == len(tokens):
                self._current, self._next_index = None, index + 1
        if self._current is not None:
            self.state.documents, self.state.offset = self._current[0], self._position
        else:
            self.state.documents, self.state.offset = self._next_index, 0
        return context

    def contexts(self) -> Iterator[list[int]]:
        while (context := self.next_context()) is not None:
            yield context


def _chunks(iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# --- the harvest stream: general text mixed with reasoning traces --------------------------------
def is_reasoning_context(index: int, fraction: float) -> bool:
    """Context `index` comes from the reasoning corpus: exactly `fraction` of every prefix, rounded down."""
    return int((index + 1) * fraction) > int(index * fraction)


@dataclass
class StreamState:
    contexts: int = 0
    general: PackerState | None = None
    reasoning: PackerState | None = None
    documents_used: int = 0
    """General-corpus documents touched so far (held-out text starts after them)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StreamState:
        return cls(contexts=data["contexts"], documents_used=data["documents_used"],
                   general=PackerState(**data["general"]) if data.get("general") else None,
                   reasoning=PackerState(**data["reasoning"]) if data.get("reasoning") else None)


class ContextStream:
    """The harvest corpus as fixed-length contexts: `harvest.corpus` packed, with every
    1/`reasoning_fraction`-th context from `harvest.reasoning_corpus` (cycled if it runs out)."""

    def __init__(self, harvest: HarvestConfig, tokenizer, *, state: StreamState | None = None,
                 cycle: bool = False, exclude_questions: frozenset[str] = frozenset()) -> None:
        state = state or StreamState()
        self.harvest, self.contexts = harvest, state.contexts
        self.general = Packer(
            lambda skip: iter_texts(harvest.corpus, split=harvest.corpus_split, text_column=harvest.text_column,
                                    config_name=harvest.corpus_config, config_key="harvest.corpus", skip=skip),
            tokenizer, harvest.context_length, state=state.general, cycle=cycle, name="harvest.corpus")
        self.general.documents_touched = max(self.general.documents_touched, state.documents_used)
        self.reasoning, self._warned_cycle = None, False
        self.exclude_questions = exclude_questions
        if harvest.reasoning_fraction > 0 and harvest.reasoning_corpus:
            self.reasoning = Packer(
                lambda skip: reasoning_texts(harvest.reasoning_corpus, split=harvest.reasoning_split, skip=skip,
                                             exclude_questions=exclude_questions),
                tokenizer, harvest.context_length, state=state.reasoning, cycle=True, name="harvest.reasoning_corpus")

    @property
    def documents_used(self) -> int:
        return self.general.documents_touched

    def state(self) -> StreamState:
        return StreamState(contexts=self.contexts, documents_used=self.documents_used,
                           general=PackerState(**asdict(self.general.state)),
                           reasoning=PackerState(**asdict(self.reasoning.state)) if self.reasoning else None)

    def next_context(self) -> list[int] | None:
        if self.reasoning is not None and is_reasoning_context(self.contexts, self.harvest.reasoning_fraction):
            context = self.reasoning.next_context()
            if self.reasoning.state.passes > 0 and not self._warned_cycle:
                self._warned_cycle = True
                log.warning("harvest.reasoning_corpus exhausted after %d contexts: cycling over it again",
                            self.contexts)
        else:
            context = self.general.next_context()
        if context is not None:
            self.contexts += 1
        return context

    def next_batch(self, n_contexts: int) -> torch.Tensor | None:
        """[n, context_length] token ids (n may be short at the corpus's end; None when it is over)."""
        batch = []
        for _ in range(n_contexts):
            context = self.next_context()
            if context is None:
                break
            batch.append(context)
        return torch.tensor(batch, dtype=torch.long) if batch else None

    def describe(self, tokenizer) -> dict:
        sep = separator_id(tokenizer)
        return {"packing": f"documents joined by {tokenizer.convert_ids_to_tokens(sep)} (id {sep}) and cut into "
                           f"{self.harvest.context_length}-token windows; no padding",
                "corpus": self.harvest.corpus, "corpus_split": self.harvest.corpus_split,
                "corpus_config": self.harvest.corpus_config, "text_column": self.harvest.text_column,
                "reasoning_corpus": self.harvest.reasoning_corpus if self.reasoning else None,
                "reasoning_fraction": self.harvest.reasoning_fraction if self.reasoning else 0.0,
                "reasoning_questions_excluded": len(self.exclude_questions) if self.reasoning else 0,
                # which ones (reasondiff.lm.holdout.question_key): what preflight checks held-out text
                # against, and what a null pair's harvest must share to reuse this store's base rows
                "reasoning_questions_excluded_keys": sorted(self.exclude_questions) if self.reasoning else [],
                "context_length": self.harvest.context_length}


def heldout_contexts(harvest: HarvestConfig, tokenizer, n_contexts: int, context_length: int, *,
                     documents_used: int) -> torch.Tensor:
    """[n, context_length] contexts of `harvest.corpus` from document `documents_used` on — text
    the harvest (hence the crosscoder) never saw. Packed exactly like the harvest."""
    packer = Packer(
        lambda skip: iter_texts(harvest.corpus, split=harvest.corpus_split, text_column=harvest.text_column,
                                config_name=harvest.corpus_config, config_key="harvest.corpus", skip=skip),
        tokenizer, context_length, state=PackerState(documents=documents_used), name="harvest.corpus")
    contexts = list(itertools.islice(packer.contexts(), n_contexts))
    if not contexts:
        raise UserError(f"harvest.corpus={harvest.corpus}: no text left after the {documents_used} documents the "
                        f"harvest used; set analyze.heldout_corpus to other text (or lower harvest.n_tokens)")
    if len(contexts) < n_contexts:
        log.warning("held-out text: only %d contexts of %d tokens after the %d harvested documents (asked for %d)",
                    len(contexts), context_length, documents_used, n_contexts)
    return torch.tensor(contexts, dtype=torch.long)
