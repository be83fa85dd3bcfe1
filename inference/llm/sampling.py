"""Choosing each row's next token from the batch's logits: greedy rows in one argmax, the others through
transformers' own logits processors in ``generate``'s order (repetition penalty, then temperature, top-k,
top-p, typical-p), OpenAI's frequency and presence penalties, and a per-sequence ``torch.Generator`` so a
seed reproduces a sampled request whatever its batch companions. Also the logprobs TGI reports: the chosen
token's, the ``top_n_tokens`` most likely ones, and the prompt's (``decoder_input_details``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from aiops.inference.llm.generation import Token
from aiops.inference.llm.sequence import Sequence


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float
    top_tokens: tuple[Token, ...]


class TokenChooser:
    """Tokens chosen and reported with the tokenizer's text for each (special tokens marked as TGI does)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def token(self, token_id: int, logprob: float, text: str) -> Token:
        return Token(token_id, text, logprob, token_id in self.special_ids)

    def choose(self, seqs: list[Sequence], logits: torch.Tensor) -> list[Choice]:
        """The next token of each row of ``logits`` [rows, vocab]: plain greedy rows in one argmax, the
        others row by row."""
        logits = logits.float()
        choices: list[Choice | None] = [None] * len(seqs)
        plain = [row for row, seq in enumerate(seqs) if seq.plain_greedy]
        if plain:
            rows = logits[plain] if len(plain) < len(seqs) else logits
            best = rows.argmax(dim=-1)
            row_logprobs = torch.log_softmax(rows, dim=-1)
            # two transfers for all rows: per-row indexing costs a tensor op each, per token
            picked = row_logprobs.gather(1, best[:, None])[:, 0].tolist()
            for i, (row, token_id) in enumerate(zip(plain, best.tolist(), strict=True)):
                n = seqs[row].params.top_n_tokens
                choices[row] = Choice(token_id, picked[i], self._top_tokens(row_logprobs[i], n) if n else ())
        for row, seq in enumerate(seqs):
            if choices[row] is not None:
                continue
            scores = process(seq, logits[row : row + 1])
            if seq.params.do_sample:
                token_id = int(
                    torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=seq.generator)[0, 0]
                )
            else:
                token_id = int(scores.argmax(dim=-1)[0])
            choices[row] = self._choice(token_id, torch.log_softmax(scores, dim=-1)[0], seq)
        return cast(list[Choice], choices)  # every row is chosen by now

    def prompt_tokens(self, ids: list[int], logits: torch.Tensor) -> tuple[Token, ...]:
        """The prompt's tokens with their logprobs from the prefill's ``logits`` [prompt, vocab]; the first
        has none (NaN), as in TGI's ``prefill`` details."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = [self.token(ids[0], float("nan"), self.tokenizer.decode([ids[0]]))]
        for position in range(1, len(ids)):
            token_id = ids[position]
            out.append(
                self.token(
                    token_id, float(logprobs[position - 1, token_id]), self.tokenizer.decode([token_id])
                )
            )
        return tuple(out)

    def _choice(self, token_id: int, logprobs: torch.Tensor, seq: Sequence) -> Choice:
        return Choice(
            token_id, float(logprobs[token_id]), self._top_tokens(logprobs, seq.params.top_n_tokens)
        )

    def _top_tokens(self, logprobs: torch.Tensor, n: int) -> tuple[Token, ...]:
        if not n:
            return ()
        values, indices = logprobs.topk(min(n, logprobs.shape[-1]))
        return tuple(
            self.token(int(i), float(v), self.tokenizer.decode([int(i)]))
            for v, i in zip(values, indices, strict=True)
        )


def process(seq: Sequence, scores: torch.Tensor) -> torch.Tensor:
    """transformers' processors in ``generate``'s order: penalties, then the sampling warpers."""
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    p = seq.params
    ids = torch.tensor([seq.ids], device=scores.device)
    if p.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
    if (p.frequency_penalty or p.presence_penalty) and len(seq.ids) > seq.input_length:
        generated = torch.tensor(seq.ids[seq.input_length :], device=scores.device)
        counts = torch.bincount(generated, minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
        scores = scores - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(scores.dtype)
    if p.do_sample:
        if p.temperature != 1.0:
            scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
        if p.top_k:
            scores = TopKLogitsWarper(p.top_k)(ids, scores)
        if p.top_p < 1.0:
            scores = TopPLogitsWarper(p.top_p)(ids, scores)
        if p.typical_p < 1.0:
            scores = TypicalLogitsWarper(p.typical_p)(ids, scores)
    return scores
