"""The train and test channels: `*.jsonl` examples (conversations or prompt/completion), tokenized with
the loss on the completion only, and the collator that pads a batch.

The model's tokenizer, torch in the collator (no aiops import): train.py ships it to the SageMaker
container.
"""

from __future__ import annotations

import glob
import json
import os

from finetune_errors import UsageProblem

IGNORE_INDEX = -100  # labels the loss skips (the prompt, the padding)


def read_examples(folder: str, channel: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True))
    if not files:
        raise UsageProblem(
            f"channel {channel} ({folder}) has no .jsonl file; write the channels with "
            "`aiops example finetune-data OUT`"
        )
    examples = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"channel {channel}: {os.path.relpath(file, folder)} line {number}"
                try:
                    item = json.loads(line)
                except ValueError as err:
                    raise UsageProblem(f"{where} is not JSON ({err})") from None
                examples.append(split_example(item, where))
    if not examples:
        raise UsageProblem(f"channel {channel} ({folder}) has no examples")
    return examples


def split_example(item: object, where: str) -> dict:
    """{"prompt": str | messages, "completion": str | messages} from either accepted format."""
    if isinstance(item, dict) and isinstance(item.get("messages"), list):
        messages = item["messages"]
        if (
            len(messages) < 2
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
            or messages[-1]["role"] != "assistant"
        ):
            raise UsageProblem(
                f'{where}: "messages" must be a list of {{role, content}} ending with the assistant\'s answer'
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if isinstance(item, dict) and "prompt" in item and "completion" in item:
        prompt, completion = item["prompt"], item["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return {"prompt": prompt, "completion": completion}
        if isinstance(prompt, list) and isinstance(completion, list):
            return {"prompt": prompt, "completion": completion}
        raise UsageProblem(f'{where}: "prompt" and "completion" must both be strings or both message lists')
    raise UsageProblem(f'{where}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": ...}}')


def tokenize(examples: list[dict], tokenizer, max_length: int, channel: str) -> list[dict]:
    """input_ids and labels (the prompt's positions IGNORE_INDEX) of each example that keeps at
    least one completion token within max_length."""
    rows, dropped = [], 0
    for example in examples:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            if not tokenizer.chat_template:
                raise UsageProblem(
                    f"channel {channel} holds conversations but the model's tokenizer has no chat "
                    "template; add one to tokenizer_config.json, or use prompt/completion strings"
                )
            prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise UsageProblem(
                    "the chat template renders the conversation without its prompt as a prefix; "
                    "use prompt/completion strings with this model"
                )
            completion_text = full_text[len(prompt_text) :]
        else:
            prompt_text, completion_text = prompt, completion + (tokenizer.eos_token or "")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + completion_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise UsageProblem(
            f"channel {channel}: no example keeps a completion token within --max-length "
            f"{max_length}; raise --max-length"
        )
    if dropped and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"note: channel {channel}: {dropped} example(s) longer than --max-length {max_length} in their "
            "prompt alone are left out",
            flush=True,
        )
    return rows


class Collator:
    """Right-pads a batch: pad token, attention mask 0, labels IGNORE_INDEX."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
