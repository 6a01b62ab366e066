"""finetune.padding_free: trl's padding-free batches keep the loss on the assistant turn only and
give the padded batch's loss (the same rows, no pad tokens computed); finetune.loss_head=model gives
trl's loss through the model's own forward."""

from __future__ import annotations

import pytest
import torch

from reasondiff.config import ReasoningFormat
from reasondiff.finetune.data import to_dataset
from reasondiff.lm.sft_example import IGNORE_INDEX, tokenize_example

FMT = ReasoningFormat()
MAX_LENGTH = 512  # above every row here: nothing is cut
ROWS = [("What is 2 + 3?", "2 + 3 = 5.", "5"),
        ("Name the capital of France, please.", "France's capital city is Paris; check: yes.\n\nSo Paris.", "Paris"),
        ("Is 7 prime?", "7 has no divisor but 1 and 7.", "yes")]


def _examples(tokenizer):
    return [tokenize_example(tokenizer, q, t, a, FMT) for q, t, a in ROWS]


def _trainer(tokenizer, model, examples, tmp_path, padding_free: bool):
    from trl import SFTConfig, SFTTrainer

    # the keys reasondiff.finetune.run passes for padding_free
    args = SFTConfig(output_dir=str(tmp_path), max_length=None if padding_free else MAX_LENGTH, packing=False,
                     padding_free=padding_free, per_device_train_batch_size=len(examples), use_cpu=True,
                     report_to="none", save_strategy="no", shuffle_dataset=False, disable_tqdm=True)
    dataset = to_dataset(examples, MAX_LENGTH if padding_free else None)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_packed_rows_carry_loss_on_the_assistant_turn_only(tiny_tokenizer, tiny_model, tmp_path):
    examples = _examples(tiny_tokenizer)
    assert len({len(e.input_ids) for e in examples}) == len(examples)  # different lengths: padding would be needed
    trainer = _trainer(tiny_tokenizer, tiny_model, examples, tmp_path, padding_free=True)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one flat row, no padding
    ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    assert ids.numel() == sum(len(e.input_ids) for e in examples)
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) == len(examples)
    order = {tuple(e.input_ids): e for e in examples}  # the sampler may reorder the rows
    seen = 0
    for start, end in zip(starts, [*starts[1:], ids.numel()], strict=True):
        example = order[tuple(ids[start:end].tolist())]
        assert positions[start:end].tolist() == list(range(end - start))
        want = torch.full((end - start,), IGNORE_INDEX)
        want[example.prompt_tokens:] = torch.tensor(example.input_ids[example.prompt_tokens:])
        assert torch.equal(labels[start:end], want)  # prompt (and the sequence's first token) unlabelled
        seen += 1
    assert seen == len(examples)
    assert len(to_dataset(examples, 10)[0]["input_ids"]) == 10  # rows cut where trl's padding-free would not


def test_padding_free_loss_equals_the_padded_loss(tiny_tokenizer, tiny_model, tmp_path):
    examples = _examples(tiny_tokenizer)
    losses = {}
    for padding_free in (False, True):
        trainer = _trainer(tiny_tokenizer, tiny_model, examples, tmp_path / str(padding_free), padding_free)
        batch = next(iter(trainer.get_train_dataloader()))
        if not padding_free:
            assert int((batch["attention_mask"] == 0).sum()) > 0  # the padded batch does pad
        with torch.no_grad():
            losses[padding_free] = float(tiny_model(**batch).loss)
    assert abs(losses[True] - losses[False]) <= 1e-5 * abs(losses[False])


@pytest.mark.parametrize("padding_free", [False, True])
def test_model_loss_head_equals_trls_chunked_head(tiny_tokenizer, tiny_model, tmp_path, padding_free):
    """finetune.loss_head=model (the default on CPU) computes trl's loss: the same mean NLL over the
    assistant tokens, through the model's own forward instead of trl's chunked LM head."""
    from reasondiff.finetune.run import sft_trainer_class

    assert sft_trainer_class("auto", "cpu") is sft_trainer_class("model", "cuda") is not None
    examples = _examples(tiny_tokenizer)
    trainer = _trainer(tiny_tokenizer, tiny_model, examples, tmp_path, padding_free)
    assert type(trainer).__name__ == "SFTTrainer"
    batch = next(iter(trainer.get_train_dataloader()))
    n_items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    tiny_model.train()  # as in a training step: both count the batch's tokens (no dropout in this model)
    assert tiny_model.config.attention_dropout == 0
    with torch.no_grad():
        want = float(trainer.compute_loss(tiny_model, dict(batch), num_items_in_batch=torch.tensor(n_items)))
        got = float(sft_trainer_class("model", "cpu").compute_loss(trainer, tiny_model, dict(batch),
                                                                    num_items_in_batch=torch.tensor(n_items)))
    assert abs(got - want) <= 1e-5 * abs(want)
    assert trainer._metrics["train"]["num_tokens"] == [2 * int(batch["labels"].numel() if padding_free
                                                          else batch["attention_mask"].sum())]  # both counted
