"""`aiops example tiny-llm`: a small Llama-architecture causal LM, made offline, for tests and demos.

- Weights: `LlamaForCausalLM(config)` initialised after `torch.manual_seed(seed)`: random, so it
  says nothing useful, but it is a real Hugging Face model that every tool loads (Trainer, peft,
  `AutoModelForCausalLM`, TGI, LMI). The same sizes and seed give the same weights, bit for bit.
- Tokenizer: byte-level BPE trained here with `tokenizers` on the running Python's standard library
  source (the files `aiops example lm-data` reads), wrapped in `PreTrainedTokenizerFast`, with the
  ChatML special tokens and chat template (`<|im_start|>role\\n...<|im_end|>`).
- `generation_config.json`: greedy, stops at `<|im_end|>` or `<|endoftext|>`.
- Everything is written with `save_pretrained` (safetensors).

The default is tiny (~140k parameters: it fine-tunes on a laptop CPU in seconds); the size options
make larger ones, e.g. ~100M parameters for benchmarks (docs/finetune.md).
"""

from __future__ import annotations

import json
import random
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path

from aiops.errors import UsageError

END_OF_TEXT = "<|endoftext|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
SPECIAL_TOKENS = (END_OF_TEXT, TURN_START, TURN_END)
# ChatML: the chat format of many open models, which TGI's and LMI's chat APIs render with this template
# no token_type_ids: a causal LM takes none (transformers 4's fast tokenizer returns them unless told)
MODEL_INPUTS = ("input_ids", "attention_mask")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# the tokenizer's training text: enough for a few thousand merges, read in about a second
CORPUS_BYTES = 2_000_000
CORPUS_SEED = 0


@dataclass(frozen=True)
class TinyLlmSize:
    """The model's shape (LlamaConfig names in parentheses)."""

    layers: int = 2  # num_hidden_layers
    hidden: int = 64  # hidden_size
    heads: int = 4  # num_attention_heads
    kv_heads: int = 2  # num_key_value_heads
    intermediate: int = 128  # intermediate_size
    vocab: int = 512  # the BPE vocabulary (special tokens included)
    max_positions: int = 512  # max_position_embeddings

    def check(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least 1.")
        if self.hidden % self.heads:
            raise UsageError(
                f"--hidden {self.hidden} is not a multiple of --heads {self.heads}; "
                "choose a hidden size that the heads divide."
            )
        if self.heads % self.kv_heads:
            raise UsageError(
                f"--heads {self.heads} is not a multiple of --kv-heads {self.kv_heads}; "
                "choose key/value heads that divide the heads."
            )
        if (self.hidden // self.heads) % 2:
            raise UsageError(
                f"the head size {self.hidden // self.heads} (--hidden / --heads) is odd; rotary "
                "embeddings need an even one."
            )
        if self.vocab < 256 + len(SPECIAL_TOKENS):
            raise UsageError(
                f"--vocab {self.vocab}: a byte-level vocabulary needs at least "
                f"{256 + len(SPECIAL_TOKENS)} tokens (256 bytes and {len(SPECIAL_TOKENS)} special)."
            )


def corpus_texts(limit: int = CORPUS_BYTES) -> list[str]:
    """The tokenizer's training text: standard-library files in a fixed shuffled order, up to
    `limit` bytes."""
    from aiops.training.examples.lm.prepare import corpus_files

    files = corpus_files()
    if not files:
        raise UsageError(
            f"no .py files under {sysconfig.get_paths()['stdlib']}: this Python has no standard "
            "library source to train the tokenizer on."
        )
    random.Random(CORPUS_SEED).shuffle(files)
    texts, used = [], 0
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        used += len(text)
        if used >= limit:
            break
    return texts


def train_tokenizer(vocab: int, max_positions: int):
    """A byte-level BPE tokenizer (GPT-2 style) as a `PreTrainedTokenizerFast` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_texts(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=TURN_END,
        pad_token=END_OF_TEXT,
        model_max_length=max_positions,
        clean_up_tokenization_spaces=False,
        model_input_names=list(MODEL_INPUTS),
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def write_model(
    out: str | Path, size: TinyLlmSize = TinyLlmSize(), *, seed: int = 0, dtype: str = "float32"
) -> dict:
    """Write the model folder; return a summary (parameters, vocabulary, files)."""
    size.check()
    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype {dtype}: choose float32 or bfloat16.")
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} exists and is not an empty folder; pass a new folder for the model.")

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(size.vocab, size.max_positions)
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    end_of_text, _, turn_end = ids
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=turn_end,
        pad_token_id=end_of_text,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        eos_token_id=[turn_end, end_of_text], pad_token_id=end_of_text, do_sample=False
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _portable_tokenizer_class(folder)
    parameters = sum(p.numel() for p in model.parameters())
    (folder / "README.md").write_text(
        f"# tiny-llm (random weights)\n\nMade offline by `aiops example tiny-llm` for tests and demos: a "
        f"Llama-architecture causal LM with random weights (seed {seed}), {parameters:,} parameters, and a "
        f"{len(tokenizer)}-token byte-level BPE tokenizer trained on the Python standard library. It "
        "generates "
        "noise until fine-tuned; it exists to exercise the tools.\n"
    )
    return {
        "path": str(folder),
        "parameters": parameters,
        "vocab": len(tokenizer),
        "seed": seed,
        "dtype": dtype,
        "files": sorted(p.name for p in folder.iterdir()),
    }


def _portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 may name the fast tokenizer `TokenizersBackend` in tokenizer_config.json, a
    class transformers 4 lacks; both load `PreTrainedTokenizerFast` (an alias of it in 5), so the
    folder says that and loads wherever it goes (LMI and TGI images pin their own transformers)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    wanted = {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": list(MODEL_INPUTS)}
    if any(config.get(k) != v for k, v in wanted.items()):
        path.write_text(json.dumps({**config, **wanted}, indent=2, sort_keys=True) + "\n")
