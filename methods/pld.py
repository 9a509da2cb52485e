"""`pld`: prompt-lookup decoding — the training-free n-gram drafter of Spec-Bench and HF.

The drafter matches the last n tokens of the context (prompt + everything emitted, n from
`max_ngram` down to `min_ngram`) against earlier occurrences and proposes the `depth` tokens that
followed the match (HF `PromptLookupCandidateGenerator`, apoorvumang/prompt-lookup-decoding). It
proposes deterministic tokens, so the engine verifies them with the one-hot rule: lossless at every
temperature (DESIGN.md §5). Verification is the shared chain verifier (issue 4); the lookup is one
vectorised pass over the batch's token history, so batches of any size cost one call.

`match="first"` takes the earliest occurrence (HF, Spec-Bench); `"last"` the most recent one.
"""

from __future__ import annotations

import torch

from specbench.engine import ChainSpeculativeDecoder, Proposal
from specbench.errors import SpecbenchError
from specbench.methods.base import Method, integer, one_of


def prompt_lookup(ids: torch.Tensor, lengths: torch.Tensor, depth: int, max_ngram: int = 3, min_ngram: int = 1,
                  match: str = "first") -> Proposal:
    """Drafts per row from the token history `ids [B, L]` (row b valid up to `lengths[b]`).

    For each n (largest first) a row without a draft yet looks for its last n-gram at an earlier
    position i whose continuation starts inside the context (i + n < length); the draft is up to
    `depth` tokens from i + n, cut at the end of the context. Rows without a match draft nothing.
    """
    if match not in ("first", "last"):
        raise ValueError(f"match must be 'first' or 'last', got {match!r}")
    b, width = ids.shape
    dev = ids.device
    found = torch.zeros(b, dtype=torch.bool, device=dev)
    start = torch.zeros(b, dtype=torch.long, device=dev)
    for n in range(max_ngram, min_ngram - 1, -1):
        if width < n + 1:
            continue
        tail = (lengths[:, None] - n + torch.arange(n, device=dev)[None, :]).clamp_min(0)  # [B, n]
        gram = ids.gather(1, tail)
        windows = ids.unfold(1, n, 1)  # [B, width-n+1, n]
        pos = torch.arange(windows.shape[1], device=dev)
        hit = (windows == gram[:, None, :]).all(-1) & (pos[None, :] + n < lengths[:, None])  # [B, width-n+1]
        if match == "first":
            first = hit.long().argmax(1)
        else:
            first = (hit.long() * (pos[None, :] + 1)).argmax(1)
        new = hit.any(1) & ~found & (lengths >= n + 1)
        start = torch.where(new, first + n, start)
        found |= new
    span = start[:, None] + torch.arange(depth, device=dev)[None, :]  # [B, depth]
    valid = (span < lengths[:, None]) & found[:, None]
    tokens = ids.gather(1, span.clamp(max=width - 1))
    return Proposal(torch.where(valid, tokens, 0), valid.sum(1))


class PromptLookupDecoder(ChainSpeculativeDecoder):
    def __init__(self, target, sampling, generator, depth: int, max_ngram: int = 3, min_ngram: int = 1,
                 match: str = "first"):
        super().__init__(target, sampling, generator, depth)
        self.max_ngram, self.min_ngram, self.match = int(max_ngram), int(min_ngram), match

    def propose(self, active: torch.Tensor) -> Proposal:
        """Look up over the filled part of the history only (the buffer is sized for the whole answer). On a
        CPU the verify width is the longest active row's draft: 0 when no active row matched (a 1-token
        forward), fewer than `depth` when every match is cut at the end of the context — as HF's prompt
        lookup sizes its candidates. There a forward's cost grows with its width (`specbench bench`,
        smollm2 on 2 CPU cores: 2 / 4 / 8 tokens cost 1.35 / 1.43 / 2.16 AR steps), so padding columns are
        not free. Deciding needs the match lengths on the host: free on a CPU, but on a GPU it would be a
        second sync per step that the AR arm does not pay, for a forward whose cost barely depends on its
        width in the launch-bound regime, so a GPU always verifies the full width. So does the compiled regime
        on any device: a captured graph per width, each width first met in a timed step, compiles there."""
        filled = self.history.ids[:, :max(self.history.host_lengths)]
        proposal = prompt_lookup(filled, self.history.lengths, self.depth, self.max_ngram, self.min_ngram, self.match)
        if filled.device.type != "cpu" or self.target.regime == "compiled":
            return proposal
        longest = int((proposal.lengths * active).max()) if proposal.lengths.numel() else 0
        return proposal if longest == proposal.tokens.shape[1] else proposal.trimmed(longest)


class PromptLookupMethod(Method):
    name = "pld"
    description = "prompt-lookup (n-gram) decoding, training-free; chain verification (HF / Spec-Bench PLD)"
    default_depth = 7
    DECODE_OPTIONS = {"max_ngram": 3, "min_ngram": 1, "match": "first"}
    COMPILED_PASSES = {"captured": ["target verify"], "eager": ["prefill", "n-gram lookup"]}
    OPTION_KINDS = {"max_ngram": integer(1), "min_ngram": integer(1), "match": one_of("first", "last")}

    def __init__(self, target, depth: int | None = None, **options):
        options = {k: v for k, v in options.items() if not (k == "drafter" and v is None)}
        self.opts = self.split_options(options)
        if self.opts["min_ngram"] > self.opts["max_ngram"]:
            raise SpecbenchError(f"pld option min_ngram must be <= max_ngram ({self.opts['max_ngram']}), "
                                 f"got {self.opts['min_ngram']}")
        super().__init__(target, depth, **options)

    def make_decoder(self, sampling, generator):
        return PromptLookupDecoder(self.target, sampling, generator, self.depth, **self.opts)

    def describe(self) -> dict:
        out = super().describe()
        out["options"] = dict(self.opts)
        out["tokens_per_target_forward"] = self.depth + 1
        return out
