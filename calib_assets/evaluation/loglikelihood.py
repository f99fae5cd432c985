"""lm-eval's HFLM with a leaner loglikelihood: the output head and the log-softmax only at the positions that
predict a continuation token.

HFLM computes logits of the whole padded batch ([batch, length, vocab], then a float32 log-softmax over all of
it) and keeps the continuation's positions. With a 49k vocabulary and a 135M model the head is a fifth of the
forward FLOPs and the float32 log-softmax the largest tensor of the step; the requests of the offline tasks
are mostly context. Requests are sorted and batched as HFLM sorts them (longest first, right-padded, no
attention mask: the model is causal), the decoder runs once per batch, and the head sees only the gathered
continuation positions. Same inputs, same truncation, same (log-probability, is-greedy) answers; HFLM's own
path stays in use wherever this one does not apply (seq2seq, automatic batch sizes, models whose decoder
and head cannot be taken apart).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator


class ContinuationOnlyLM(HFLM):
    def _parts(self):
        decoder = getattr(self.model, "get_decoder", lambda: None)()
        head = self.model.get_output_embeddings()
        if self.backend != "causal" or self.batch_size == "auto" or decoder is None or head is None:
            return None
        return decoder, head

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        parts = self._parts()
        if parts is None or override_bs is not None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        decoder, head = parts
        ordered = Collator(requests, sort_fn=lambda request: (-len(request[1] + request[2]),
                                                              tuple(request[1] + request[2])))
        answers = []
        for chunk in ordered.get_batched(n=self.batch_size):
            answers += self._score_batch(decoder, head, chunk)
        return ordered.get_original(answers)

    @torch.no_grad()
    def _score_batch(self, decoder, head, chunk) -> list[tuple[float, bool]]:
        inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for _, context, continuation in chunk]
        length = max(len(tokens) for tokens in inputs)
        batch = torch.zeros((len(inputs), length), dtype=torch.long)
        rows: list[int] = []
        positions: list[int] = []
        targets: list[int] = []
        sizes: list[int] = []
        for row, (tokens, (_, _, continuation)) in enumerate(zip(inputs, chunk)):
            batch[row, :len(tokens)] = torch.tensor(tokens)
            # position p predicts token p + 1: the continuation's tokens come from its last len(cont) positions
            start = len(tokens) - len(continuation)
            rows += [row] * len(continuation)
            positions += range(start, len(tokens))
            targets += continuation
            sizes.append(len(continuation))
        hidden = decoder(input_ids=batch.to(self.device)).last_hidden_state
        picked = hidden[torch.tensor(rows, device=hidden.device), torch.tensor(positions, device=hidden.device)]
        log_probs = F.log_softmax(head(picked), dim=-1, dtype=self.softmax_dtype)
        target = torch.tensor(targets, device=log_probs.device)
        chosen = log_probs.gather(1, target[:, None])[:, 0]
        greedy = log_probs.argmax(dim=-1) == target
        answers = []
        for (request, _, _), token_log_probs, token_greedy in zip(chunk, chosen.split(sizes), greedy.split(sizes)):
            answer = (float(token_log_probs.sum()), bool(token_greedy.all()))
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
            answers.append(answer)
        return answers
