"""`mtp`: Apple's multi-token prediction ("Your LLM Knows the Future", arXiv 2507.11851) as a baseline.

Spec: `../shared/methods/bita_mtp_flexdraft.md` Part B, with §1.2 (one-ahead convention) and §1.3 (4-D
masks, explicit positions). There is no official code; the spec reconstructs the method from the paper's
abstract, a secondary paper note [2nd] and a third-party engine, BatchSpec [3rd]. The frozen target *is*
the drafter:

* **Gated LoRA** (B.2). A rank-`r` LoRA on every linear of every block (q, k, v, o, gate, up, down: the
  module set of BatchSpec [3rd]), `y = W x + g (alpha/r) B A x` with `g = 1` on mask rows and `0`
  elsewhere. It is never merged and is applied through forward hooks that exist only while an MTP pass
  runs, so the AR arm (same target object, same process) runs the untouched model, and rows with `g = 0`
  get exactly `W x` (the delta is an exact zero). Clean rows never see mask rows, so their logits and K/V
  are the target's: verification is lossless.
* **Masks** (B.2 [2nd]). `k` distinct learned embeddings `m_1..m_k` enter at layer 0. After the last
  visible clean token at position `q`, mask `m_j` sits at `q + j` and predicts the token at `q + j + 1`
  (one-ahead, §1.2); causal inside a block (the 3rd-party engine's choice; the paper is silent, G-2).
* **Sampler head** (B.2 [3rd exact layout]). `a1 = RMSNorm(SiLU(W1 [E(y_prev); h]))`,
  `a2 = RMSNorm(SiLU(W2 a1))`, logits `= lm_head(a1 + a2)`, `h` the final-normed mask state, `E` and
  `lm_head` the target's, frozen. Drafts are decoded sequentially, `y_0` = the step's bonus token.
* **Training** (B.3, B.4). Clean sequence + one block of `k` masks per sampled anchor `t` (masks at
  `t+1..t+k` see clean tokens `<= t` and their own block, causally; blocks never see each other). The
  clean rows run once without gradients and fill a KV cache (they never see masks and carry gate 0, so
  this equals the one-pass B.4 layout; `test_two_pass_training_equals_the_one_pass_layout`), then only
  the mask rows run through the LoRA-gated target. Loss `w_base * L_base + w_sampler * L_sampler +
  w_lcm * L_LCM`: `L_base` = CE of the LM head on the mask states, `L_sampler` = CE of the sampler
  teacher-forced with the true previous token, `L_LCM` = MSE between the mask state and the
  stop-gradient NTP state at the same position (the final-normed state that feeds the LM head).
* **Decoding** (B.5). *quadratic* (default, B.5.1): one pass over `[x_0, s_1..s_k]` plus one mask block
  after every one of them, `(k+1)^2` rows; the engine's `verify_chain` accepts (T = 0: cumulative
  product of matches; T > 0: speculative sampling with one-hot proposals, the drafts being sampler
  argmaxes) and the block after the last accepted token gives `k` fresh drafts, sampler-decoded from
  the bonus. *linear* (`-o decoding=linear`, B.5.2 [recon]): `[x_0, s_1..s_v, m_1..m_k]`; the masks give
  the next drafts only if all `v` drafts were accepted, otherwise the next step is a pure draft step
  (`v = 0`). The pending rows are ordered tokens first, mask blocks after, so the engine's prefix commit
  is the B.5.3 compaction (the K/V of the accepted token rows already sit in contiguous slots; mask K/V
  and rejected tokens are dropped) without the copy BatchSpec needs for its interleaved order.

Reconstructed choices ([recon] in the spec, all listed by `MTPMethod.describe()["notes"]`): the LCM
distance, side and weights (MSE, final-normed state, 1:1:1); teacher forcing in `L_sampler`; learnable
mask embeddings initialised at the mean input embedding plus noise; LoRA `alpha` and init (A Kaiming,
B zero: training starts from the base model); self-distilled targets (the shared trainer's data);
causal masks within a block; linear decoding's stall step; the prompt's mask block run after the
engine's prefill instead of a first `[x_0, m_1..m_k]` draft step; CPU-sized defaults (rank 8, anchors).

Decoding defaults by device (`CPU_DEFAULTS`; issue 23). On CUDA the paper's operating point: all `k`
trained masks, quadratic. On a CPU every extra row costs time, and the measured best on smollm2-135m is
**linear decoding at depth 4** (README "Measured on smollm2-135m", 2026-11-26: drafters trained on an
H200, then T = 0, batch 1, 10 prompts x 128 tokens on 2 CPU cores, decode speedup vs the interleaved AR
arm): GSM8K quadratic depth 4 τ 2.54 / 0.64x, linear depth 4 τ 1.89 / 0.79x (HumanEval 0.45x vs 0.60x,
MT-Bench 0.41x vs 0.57x); quadratic at k = 8 (81 rows per pass) 0.06x. Depths 2 and 3 are not measured
yet: `benchmarks/cpu_defaults.yaml` re-measures depth 2/3/4 x quadratic/linear.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from specbench import compiled
from specbench.decode import ActiveRows
from specbench.engine import Proposal, SpeculativeDecoder, verify_chain
from specbench.engine.acceptance import accept_speculative
from specbench.errors import SpecbenchError
from specbench.kv_cache import RowKVCache, additive_mask
from specbench.layers import RMSNorm
from specbench.methods.base import SWITCH, Method, one_of
from specbench.training.data import pick_anchors
from specbench.training.drafter import Drafter
from specbench.training.head_loss import chunked_head_terms

#: the paper's main setup (B.1, B.4 [2nd]); specbench's defaults are sized for the CPU budget
PAPER_DEFAULTS = {"num_masks": 8, "rank": 128, "lr": 2e-4, "steps": 50_000, "decoding": "quadratic"}
DECODINGS = ("quadratic", "linear")
#: CPU decoding defaults: the best measured configuration on smollm2-135m (module docstring)
CPU_DEFAULTS = {"depth": 4, "decoding": "linear"}


def device_defaults(device_type: str, num_masks: int) -> dict:
    """Depth and decoding when none is given: the paper's (every trained mask, quadratic) on CUDA,
    `CPU_DEFAULTS` capped at the trained `k` on a CPU."""
    if device_type == "cuda":
        return {"depth": num_masks, "decoding": PAPER_DEFAULTS["decoding"]}
    return {"depth": min(CPU_DEFAULTS["depth"], num_masks), "decoding": CPU_DEFAULTS["decoding"]}
#: mask rows per LM-head chunk in training (bounds the `[rows, V]` logits held at once)
HEAD_CHUNK = 2048


@dataclass
class MTPConfig:
    """Everything needed to rebuild a drafter (saved in config.json). `linears` maps each adapted linear of
    a block (`self_attn.q_proj`...) to its `[in, out]` features; every block has the same set."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    linears: dict = field(default_factory=dict)
    rms_norm_eps: float = 1e-6
    num_masks: int = 8  # k (the paper's main setting)
    rank: int = 8  # LoRA rank r (paper 128; low ranks keep most of the gain, B.4 ablation)
    lora_alpha: float = 16.0  # scale alpha / r
    base_weight: float = 1.0  # L_base
    sampler_weight: float = 1.0  # L_sampler
    lcm_weight: float = 1.0  # L_LCM
    num_anchors: int = 16  # mask blocks per training sequence

    def __post_init__(self):
        self.num_masks, self.rank, self.num_anchors = int(self.num_masks), int(self.rank), int(self.num_anchors)
        for name in ("lora_alpha", "base_weight", "sampler_weight", "lcm_weight"):
            setattr(self, name, float(getattr(self, name)))
        if self.num_masks < 1 or self.rank < 1 or self.num_anchors < 1:
            raise SpecbenchError("mtp needs num_masks, rank and num_anchors >= 1")
        if min(self.base_weight, self.sampler_weight, self.lcm_weight) < 0:
            raise SpecbenchError("mtp loss weights must be >= 0")


# -- layouts ---------------------------------------------------------------------------------------------

def block_layout(anchors: torch.Tensor, width: int, masks: int):
    """Pending rows of an MTP pass: `width` token rows (causal) then one block of `masks` mask rows after
    each token row in `anchors [B, n]` (-1 = after the committed cache, no token row seen).

    Mask `j` of a block anchored at token row `r` sits at offset `r + 1 + j` (B.5.1: position p + i + j)
    and sees token rows `<= r` and the masks `<= j` of its own block; token rows never see masks.
    Returns `(intra [B, Q, Q] bool, depths [B, Q])`, `Q = width + n * masks`; depth 0 is the first token row.
    """
    b, n = anchors.shape
    dev = anchors.device
    q = width + n * masks
    block = torch.arange(n, device=dev).repeat_interleave(masks)  # [n*m]
    j = torch.arange(masks, device=dev).repeat(n)
    anchor = anchors[:, block]  # [B, n*m]
    tokens = torch.arange(width, device=dev)
    intra = torch.zeros(b, q, q, dtype=torch.bool, device=dev)
    intra[:, :width, :width] = tokens[:, None] >= tokens[None, :]
    intra[:, width:, :width] = tokens[None, None, :] <= anchor[:, :, None]
    intra[:, width:, width:] = (block[:, None] == block[None, :]) & (j[:, None] >= j[None, :])
    depths = torch.cat([tokens.expand(b, width), anchor + 1 + j], 1)
    return intra, depths


def training_visibility(anchors: torch.Tensor, keep: torch.Tensor, length: int, masks: int) -> torch.Tensor:
    """B.4: which keys the mask rows of packed training blocks see, bool `[N, 1, K*m, length + K*m]`.

    Keys are the clean sequence (cached, slots `0..length-1`) then the mask rows. Block `i` (anchor
    `t = anchors[:, i]`) sees clean slots `<= t` (none when `keep` is False) and its own block causally.
    """
    n, k = anchors.shape
    dev = anchors.device
    block = torch.arange(k, device=dev).repeat_interleave(masks)
    j = torch.arange(masks, device=dev).repeat(k)
    clean = (torch.arange(length, device=dev)[None, None, :] <= anchors[:, block, None]) & keep[:, block, None]
    own = ((block[:, None] == block[None, :]) & (j[:, None] >= j[None, :])).expand(n, -1, -1)
    return torch.cat([clean, own], -1)[:, None]


# -- modules ----------------------------------------------------------------------------------------------

class GatedLoRA(nn.Module):
    """`g * (alpha/r) * B A x` for one frozen linear (B.2); never merged into `W` (the gate forbids it)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # PEFT's init: B = 0, so training starts at the base

    def delta(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """`x [..., in]`, `gate [..., 1]` (0/1, x's dtype): the gate multiplies `A x` before `B` (cheap)."""
        return (F.linear(x.to(self.A.dtype), self.A) * gate.to(self.A.dtype)) @ self.B.t() * self.scale


class SamplerHead(nn.Module):
    """Two SiLU + RMSNorm blocks over `[E(y_prev); h]` with a residual (B.2, BatchSpec's layout [3rd]);
    the output feeds the frozen LM head."""

    def __init__(self, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden, hidden, bias=False)
        self.norm1 = RMSNorm(hidden, eps)
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = RMSNorm(hidden, eps)

    def forward(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        a1 = self.norm1(F.silu(self.fc1(torch.cat([e, h], -1))))
        return a1 + self.norm2(F.silu(self.fc2(a1)))


def block_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every linear of a decoder block (`self_attn.q_proj` ... `mlp.down_proj`), in module order."""
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


class MTPDrafter(Drafter):
    """Gated LoRA + `k` mask embeddings + sampler head on top of a frozen target (B.2).

    `MTPDrafter.for_target(target, **options)` builds a fresh one, `MTPDrafter.load(path, target)` a trained
    one. The target's decoder, input embedding and LM head run through `self.t` (not parameters).
    """

    method = "mtp"
    config_class = MTPConfig
    #: the standard CPU budget allows only tens to hundreds of steps (paper: 2e-4 over 50k steps)
    training_defaults = {"lr": 2e-3}

    def __init__(self, config: MTPConfig):
        super().__init__(config)
        h = config.hidden_size
        self.mask_embeddings = nn.Parameter(torch.zeros(config.num_masks, h))
        self.lora = nn.ModuleList(
            nn.ModuleDict({name.replace(".", "_"): GatedLoRA(i, o, config.rank, config.lora_alpha)
                           for name, (i, o) in config.linears.items()})
            for _ in range(config.num_layers))
        self.sampler = SamplerHead(h, config.rms_norm_eps)
        self.t: SimpleNamespace | None = None
        self._gate: torch.Tensor | None = None
        self._hooked: list[tuple[nn.Linear, GatedLoRA]] = []
        self._hook_fns: list[tuple[nn.Linear, Callable]] = []

    @classmethod
    def default_config(cls, target, **options) -> MTPConfig:
        """Shapes from the target; `options` set `num_masks`, `rank`, loss weights... (MTPConfig fields)."""
        known = set(MTPConfig.__dataclass_fields__) - {"num_layers", "hidden_size", "vocab_size", "linears",
                                                       "rms_norm_eps"}
        unknown = set(options) - known
        if unknown:
            raise SpecbenchError(f"mtp drafter options are {', '.join(sorted(known))}; got {sorted(unknown)}")
        c = target.config
        layer = target.model.get_decoder().layers[0]
        linears = {name: [m.in_features, m.out_features] for name, m in block_linears(layer).items()}
        return MTPConfig(num_layers=c.num_hidden_layers, hidden_size=c.hidden_size, vocab_size=target.vocab_size,
                         linears=linears, rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-6)), **options)

    def attach(self, target) -> "MTPDrafter":
        super().attach(target)
        model = target.model
        # a plain namespace, not submodules: the target stays out of parameters() and the saved weights
        self.t = SimpleNamespace(decoder=model.get_decoder(), embed=model.get_input_embeddings(),
                                 head=target.head)
        layers = self.t.decoder.layers
        if len(layers) != self.cfg.num_layers:
            raise SpecbenchError(f"mtp drafter built for {self.cfg.num_layers} layers, target has {len(layers)}")
        self._hooked = []
        for i, layer in enumerate(layers):
            found = {n: [m.in_features, m.out_features] for n, m in block_linears(layer).items()}
            if found != {n: list(s) for n, s in self.cfg.linears.items()}:
                raise SpecbenchError(f"mtp drafter's adapted linears do not match block {i} of the target")
            self._hooked += [(m, self.lora[i][n.replace(".", "_")]) for n, m in block_linears(layer).items()]
        # the same hook functions every pass: a captured pass (`specbench.compiled`) guards on them
        self._hook_fns = [(m, self._hook(lora)) for m, lora in self._hooked]
        model.requires_grad_(False)  # the base stays frozen (B.2)
        return self

    @torch.no_grad()
    def init_from_target(self) -> None:
        """[recon] distinct masks near the mean input embedding (BatchSpec's single mask *is* the mean)."""
        emb = self.t.embed.weight.float()
        noise = torch.randn(self.mask_embeddings.shape, device=emb.device) * emb.std() * 0.1
        self.mask_embeddings.copy_(emb.mean(0) + noise)

    # -- the gated target pass -----------------------------------------------------------------------------
    def _hook(self, lora: GatedLoRA):
        def hook(module, args, output):
            return output + lora.delta(args[0], self._gate).to(output.dtype)
        return hook

    @contextmanager
    def adapters(self, gate: torch.Tensor):
        """LoRA hooks on every block linear for one pass; `gate [B, Q]` (1 = mask row). Outside this
        context the target has no hooks at all."""
        self._gate = gate[..., None]
        handles = [m.register_forward_hook(hook) for m, hook in self._hook_fns]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._gate = None

    def run_target(self, embeds, gate, positions, mask, cache) -> torch.Tensor:
        """The target's decoder over pending rows `embeds [B, Q, H]` of `cache` (`begin_write` done) with
        explicit `positions [B, Q]` and additive 4-D `mask`; returns final-normed states `[B, Q, H]`.
        `gate None`: no adapters at all (the plain target)."""
        with self.adapters(gate) if gate is not None else nullcontext():
            return compiled.run(self.target, self.target.decoder_states, embeds, positions, mask, cache)

    def joint_forward(self, tokens: torch.Tensor, anchors: torch.Tensor, cache, masks: int | None = None,
                      lora: bool = True):
        """One inference pass (B.5): `tokens [B, w]` as pending token rows of `cache` plus a block of `masks`
        masks after each token row in `anchors [B, n]` (`block_layout`), all written after the token rows.

        Returns `(token logits [B, w, V], mask states [B, n, masks, H])`. `lora=False` runs the same
        layout without adapters (tests: token rows must not change).
        """
        b, w = tokens.shape
        m = masks or self.cfg.num_masks
        intra, depths = block_layout(anchors, w, m)
        positions = cache.begin_write(intra.shape[1])[:, :1] + depths
        mask = cache.attention_mask(intra, self.target.dtype)
        slots = torch.arange(m, device=tokens.device).repeat(anchors.shape[1])
        rows = self.mask_embeddings[slots].to(self.target.dtype).expand(b, -1, -1)
        embeds = torch.cat([self.t.embed(tokens), rows], 1)
        gate = torch.ones(b, w + rows.shape[1], device=tokens.device, dtype=embeds.dtype)
        gate[:, :w] = 0
        h = self.run_target(embeds, gate if lora else None, positions, mask, cache)
        return self.t.head(h[:, :w]), h[:, w:].reshape(b, anchors.shape[1], m, -1)

    def draft(self, states: torch.Tensor, bonus: torch.Tensor, sampler: bool = True) -> torch.Tensor:
        """Drafts `[B, m]` from one block's mask states `[B, m, H]`: sequential sampler argmaxes starting
        from `y_0 = bonus` (B.2), or (`sampler=False`, ablation) the LM head's argmax on each state."""
        if not sampler:
            return self.t.head(states).argmax(-1)
        y, out = bonus, []
        for j in range(states.shape[1]):
            y = self.t.head(self.sampler(self.t.embed(y).to(states.dtype), states[:, j])).argmax(-1)
            out.append(y)
        return torch.stack(out, 1)

    # -- training (B.3, B.4) ----------------------------------------------------------------------------
    def sample_anchors(self, loss_mask: torch.Tensor, lengths: torch.Tensor, generator=None):
        """Up to `num_anchors` distinct sorted anchors `t` per row whose first mask has a label: `x_{t+2}`
        a response token inside the sequence. `(anchors [N, K], keep [N, K])`."""
        n, s = loss_mask.shape
        ok = torch.zeros(n, s, dtype=torch.bool, device=loss_mask.device)
        ok[:, : max(s - 2, 0)] = loss_mask[:, 2:].bool()
        ok &= torch.arange(s, device=loss_mask.device)[None, :] + 2 < lengths[:, None]
        return pick_anchors(ok, self.cfg.num_anchors, generator)

    def clean_pass(self, input_ids: torch.Tensor, extra: int):
        """The clean sequence through the frozen target without gradients: `(cache holding every clean
        K/V, final-normed NTP states [N, S, H])`; the LCM's stop-gradient side (B.3)."""
        n, s = input_ids.shape
        cache = RowKVCache(n, self.cfg.num_layers, s + extra, input_ids.device)
        with torch.no_grad():
            positions = cache.begin_write(s)
            mask = cache.attention_mask(None, self.target.dtype)
            h = self.t.decoder(inputs_embeds=self.t.embed(input_ids), attention_mask=mask, position_ids=positions,
                               use_cache=True, **{self.target.cache_kwarg: cache}).last_hidden_state
        cache.commit_prefix([s] * n)
        return cache, h

    def mask_states(self, input_ids, anchors, keep):
        """Final-normed states `[N, K, k, H]` of every packed mask block (B.4 layout, two-pass forward),
        and the clean NTP states `[N, S, H]`."""
        n, s = input_ids.shape
        k = self.cfg.num_masks
        rows = anchors.shape[1] * k
        cache, h_clean = self.clean_pass(input_ids, rows)
        visible = training_visibility(anchors, keep, s, k)
        cache.begin_write(rows)
        positions = (anchors[..., None] + 1 + torch.arange(k, device=anchors.device)).reshape(n, rows)
        embeds = self.mask_embeddings.repeat(anchors.shape[1], 1).expand(n, -1, -1)
        dtype = self.target.dtype
        gate = torch.ones(n, rows, device=input_ids.device, dtype=embeds.dtype)
        h = self.run_target(embeds.to(dtype), gate, positions, additive_mask(visible, dtype), cache)
        return h.reshape(n, anchors.shape[1], k, -1), h_clean

    def _head_terms(self, h, prev, labels):
        """CE sums (base, sampler) and top-1 hits of one chunk of mask rows."""
        base = self.t.head(h).float()
        smp = self.t.head(self.sampler(self.t.embed(prev).to(h.dtype), h)).float()
        return ((F.cross_entropy(base, labels, reduction="sum"), F.cross_entropy(smp, labels, reduction="sum")),
                (base.argmax(-1) == labels, smp.argmax(-1) == labels))

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """`w_base L_base + w_sampler L_sampler + w_lcm L_LCM` (B.3) over every mask row with a response label.

        Mask `j` (0-based) after anchor `t` sits at `p = t + 1 + j`, predicts `x_{p+1}`, takes `y_prev = x_p`
        in the sampler (teacher forcing) and is pulled to the NTP state at `p` (which predicts `x_{p+1}` too).
        `batch` (the trainer's collate): `input_ids`, `loss_mask [N, S]`, `lengths [N]`; optional `anchors`/`anchor_keep [N, K]`.
        """
        ids, lm, lengths = batch["input_ids"], batch["loss_mask"].bool(), batch["lengths"]
        s, k = ids.shape[1], self.cfg.num_masks
        anchors, keep = ((batch["anchors"], batch["anchor_keep"]) if "anchors" in batch
                         else self.sample_anchors(lm, lengths, generator))
        h, h_clean = self.mask_states(ids, anchors, keep)  # [N, K, k, H], [N, S, H]
        pos = anchors[..., None] + 1 + torch.arange(k, device=ids.device)  # [N, K, k]
        nxt = (pos + 1).clamp(max=s - 1).flatten(1)
        valid = keep[..., None] & (pos + 1 < lengths[:, None, None]) & lm.gather(1, nxt).view_as(pos)
        at = pos.clamp(max=s - 1).flatten(1)
        labels = ids.gather(1, nxt).view_as(pos)[valid]
        prev = ids.gather(1, at).view_as(pos)[valid]
        hv = h[valid]  # [R, H]
        anchor_states = h_clean.gather(1, at[..., None].expand(-1, -1, h_clean.shape[-1])).view(*pos.shape, -1)[valid]
        sums, (hits_base, hits) = chunked_head_terms(self._head_terms, hv, prev, labels, chunk=HEAD_CHUNK)
        rows = max(hv.shape[0], 1)
        l_base, l_sampler = sums[0] / rows, sums[1] / rows
        l_lcm = F.mse_loss(hv.float(), anchor_states.float().detach(), reduction="sum") / (rows * hv.shape[-1])
        cfg = self.cfg
        loss = cfg.base_weight * l_base + cfg.sampler_weight * l_sampler + cfg.lcm_weight * l_lcm
        with torch.no_grad():
            hit = torch.zeros_like(valid)
            hit[valid] = hits
            # teacher-forced greedy acceptance per block = exact accepted drafts when x is the target's greedy output
            chain = (hit.long().cumprod(-1).bool() & valid).sum(-1)
            metrics = {"loss": float(loss), "loss_base": float(l_base), "loss_sampler": float(l_sampler),
                       "loss_lcm": float(l_lcm), "acc": float(hit.sum()) / rows,
                       "acc_base": float(hits_base.sum()) / rows,
                       "tau_estimate": float(chain.sum()) / max(int(keep.sum()), 1) + 1.0, "blocks": int(keep.sum())}
        return loss, metrics

    def parameter_counts(self) -> dict:
        lora = sum(p.numel() for p in self.lora.parameters())
        sampler = sum(p.numel() for p in self.sampler.parameters())
        masks = self.mask_embeddings.numel()
        return {"lora": lora, "sampler": sampler, "mask_embeddings": masks, "total": lora + sampler + masks}


# -- decoding (B.5) -----------------------------------------------------------------------------------------

class MTPDecoder(SpeculativeDecoder):
    """Quadratic or linear decoding. State per row: the bonus `last` (not in the cache), `drafts [B, k]` and
    `n_drafts [B]` (k, or 0 after a linear stall). Verification, acceptance and the cache commit are the
    engine's `verify_chain`; the MTP pass is its `forward`, the sampler decode after it is the draft span."""

    rule = staticmethod(accept_speculative)

    def __init__(self, target, sampling, generator, drafter: MTPDrafter, depth: int, decoding: str = "quadratic",
                 sampler: bool = True):
        super().__init__(target, sampling, generator, depth)
        self.drafter, self.decoding, self.use_sampler = drafter, decoding, sampler
        d = self.depth
        self.max_step_tokens = (d + 1) ** 2 if decoding == "quadratic" else 2 * d + 1  # pending rows per pass

    def _set_drafts(self, states: torch.Tensor, bonus: torch.Tensor, ok: torch.Tensor | None = None) -> None:
        """Drafts of every row from its selected block; rows with `ok` False get none (a linear stall, whose
        sampler decode is skipped when no row needs it)."""
        full = torch.full_like(bonus, self.depth)
        self.n_drafts = full if ok is None else torch.where(ok, full, torch.zeros_like(full))
        self.drafting = ok is None or bool(ok.any())  # the host needs it for the next verify width
        if not self.drafting:
            self.drafts = torch.zeros(len(bonus), self.depth, dtype=torch.long, device=bonus.device)
        else:
            # one layout for the captured sampler pass: the prompt's block is a strided view, a step's a gather
            states = states.contiguous() if self.target.regime == "compiled" else states
            self.drafts = compiled.run(self.target, self.drafter.draft, states, bonus, self.use_sampler)

    @torch.inference_mode()
    def on_prefill(self, logits):
        """The prompt's mask block (B.5.3 runs it as a first `[x_0, m..]` draft step): masks after the last
        prompt token over the committed cache, read-only, sampler-decoded from the prefill's token."""
        b = len(self.cache.lengths)
        tokens = torch.zeros(b, 0, dtype=torch.long, device=self.target.device)
        anchors = torch.full((b, 1), -1, dtype=torch.long, device=self.target.device)
        _, states = self.drafter.joint_forward(tokens, anchors, self.cache, self.depth)
        self.cache.commit_prefix([0] * b)
        self._set_drafts(states[:, 0], self.last)

    @torch.inference_mode()
    def warm_shapes(self) -> None:
        """Linear decoding's two verify widths: a drafting step's and a stall step's (no row drafting: the
        bonus verified alone, one block after it)."""
        if self.decoding != "quadratic":
            b = len(self.cache.lengths)
            for width in (self.depth, 0):
                self._lengths = torch.full((b,), width, dtype=torch.long, device=self.target.device)
                self._mtp_forward(self.last[:, None].expand(b, width + 1).contiguous(), self.cache)
            self._states = None

    @torch.inference_mode()
    def _mtp_forward(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """`ids = [x_0, s_1..s_w]`: quadratic puts a block after every token row, linear one block after
        each row's last real draft; keeps the mask states for after acceptance."""
        b, w = ids.shape
        if self.decoding == "quadratic":
            anchors = torch.arange(w, device=ids.device).expand(b, w)
        else:
            anchors = self._lengths[:, None]
        logits, self._states = self.drafter.joint_forward(ids, anchors, cache, self.depth)
        return logits

    def step(self, timer, active):
        active = ActiveRows.of(active, self.target.device)
        proposal = Proposal(self.drafts, self.n_drafts)
        if not active.all:
            proposal = proposal.only(active.device)
        width = self.depth if self.decoding == "quadratic" else self.drafting * self.depth
        proposal = Proposal(proposal.tokens[:, :width], proposal.lengths)
        self._lengths = proposal.lengths
        result = verify_chain(self.target, self.cache, self.last, proposal, self.sampling, self.generator,
                              forward=self._mtp_forward, timer=timer, rule=self.rule,
                              active=None if active.all else active.device)
        with timer.span("draft"), torch.inference_mode():
            rows = torch.arange(len(active.host), device=result.bonus.device)
            if self.decoding == "quadratic":
                self._set_drafts(self._states[rows, result.n_accepted], result.bonus)
            else:  # B.5.2: the masks are conditioned on a rejected token unless every draft was accepted
                self._set_drafts(self._states[:, 0], result.bonus, ok=result.n_accepted == proposal.lengths)
            self._states = None
        return self._finish(result, active)


# -- the method ------------------------------------------------------------------------------------------

class MTPMethod(Method):
    """Decode options (`-o KEY=VALUE`): `decoding` quadratic|linear (the issue's `--decoding linear`),
    `sampler` (false = ablation: LM-head argmax on each mask state). `--depth` is the number of masks k
    used at inference (<= the trained `num_masks`; default all). Drafter options (`num_masks`, `rank`,
    `lora_alpha`, `base_weight`, `sampler_weight`, `lcm_weight`, `num_anchors`) choose the drafter for
    `--drafter auto` and must match a given one."""

    name = "mtp"
    description = ("Apple MTP: k learned mask tokens + gated LoRA (mask rows only) + sampler head; "
                   "quadratic or linear decoding")
    needs_drafter = True
    default_depth = None  # the drafter's num_masks
    drafter_class = MTPDrafter
    DECODE_OPTIONS = {"decoding": None, "sampler": True}  # decoding None: quadratic on CUDA, CPU_DEFAULTS
    OPTION_KINDS = {"decoding": one_of(*DECODINGS), "sampler": SWITCH}
    DRAFTER_OPTIONS = ("num_masks", "rank", "lora_alpha", "base_weight", "sampler_weight", "lcm_weight",
                       "num_anchors")
    COMPILED_PASSES = {"captured": ["joint pass through the adapted target (verify + mask blocks)",
                                     "sampler decode of the drafts"],
                       "eager": ["prefill"]}

    def __init__(self, target, depth: int | None = None, drafter=None, **options):
        opts = self.split_options(options)  # -o sampler=false: the ablation
        super().__init__(target, depth=depth, **options)
        self.opts = opts
        self.attach_drafter(drafter)
        cfg = self.drafter.cfg
        defaults = device_defaults(target.device.type, cfg.num_masks)
        self.defaulted = {k: v for k, v in defaults.items() if (self.depth if k == "depth" else opts[k]) is None}
        self.depth = self.depth if self.depth is not None else defaults["depth"]
        opts["decoding"] = opts["decoding"] or defaults["decoding"]
        if not 1 <= self.depth <= cfg.num_masks:
            raise SpecbenchError(f"mtp --depth is the number of masks: 1..{cfg.num_masks} for this drafter, "
                                 f"got {self.depth}")

    def make_decoder(self, sampling, generator):
        return MTPDecoder(self.target, sampling, generator, self.drafter, self.depth, self.opts["decoding"],
                          self.opts["sampler"])

    def describe(self) -> dict:
        cfg, o, k = self.drafter.cfg, self.opts, self.depth
        counts = self.drafter.parameter_counts()
        per_forward = {"quadratic": (k + 1) ** 2, "linear": 2 * k + 1}
        notes = [
            "no official code: the method is the spec's reconstruction (Part B) from the paper's abstract, a "
            "secondary paper note and the third-party BatchSpec engine",
            f"L_LCM [recon]: MSE on the final-normed state vs the stop-gradient NTP state at the same position; "
            f"weights base:sampler:lcm = {cfg.base_weight:g}:{cfg.sampler_weight:g}:{cfg.lcm_weight:g} [recon 1:1:1]",
            "L_sampler teacher-forced with the true previous token [recon]; targets are the target's own "
            "responses (shared trainer) [recon]",
            "mask embeddings learnable, initialised at the mean input embedding + noise [recon]; LoRA on "
            f"every block linear ({', '.join(cfg.linears)}), rank {cfg.rank}, alpha {cfg.lora_alpha:g}, "
            "A Kaiming / B zero [recon: module set from BatchSpec]",
            "masks causal inside a block (BatchSpec; the paper is silent)",
            "linear decoding reconstructed (B.5.2): after a rejection the next step is [bonus, m_1..m_k]",
            "the prompt's mask block runs after the engine's prefill (read-only over the prompt cache), "
            "instead of BatchSpec's first [x_0, m..] draft step",
            "token rows first, mask blocks after in the pending slots: the engine's prefix commit is the "
            "B.5.3 compaction without a copy",
            "drafting happens inside the verify pass (timed as verify); the sequential sampler decode after "
            "it is timed as draft",
            "T > 0: sampler-argmax drafts accepted with the one-hot rule (BatchSpec), lossless",
            f"CPU-sized defaults: rank {cfg.rank} (paper 128), k = {cfg.num_masks}, shared CPU training budget",
        ]
        if not o["sampler"]:
            notes.append("sampler head switched off at inference (ablation): LM-head argmax per mask state")
        if k != cfg.num_masks:
            notes.append(f"inference uses the first {k} of {cfg.num_masks} trained masks")
        if self.defaulted and self.target.device.type != "cuda":
            notes.append(f"CPU defaults {self.defaulted} (the measured best on smollm2-135m; GPU: all trained "
                         "masks, quadratic)")
        return {
            "name": self.name, "depth": k, "options": dict(o),
            "drafter": self.drafter_path, "drafter_parameters": counts["total"],
            "tokens_per_target_forward": per_forward[o["decoding"]],
            "mask_rows_per_pass": k * (k + 1) if o["decoding"] == "quadratic" else k,
            "cost_detail": {"parameter_split": counts,
                            "fraction_of_target": counts["total"] / sum(p.numel() for p in self.target.model.parameters()),
                            "tokens_per_forward": per_forward,
                            "note": "linear: 2k+1 when k drafts are verified, k+1 on a stall step"},
            "drafter_config": {f: getattr(cfg, f) for f in self.DRAFTER_OPTIONS},
            "paper_defaults": PAPER_DEFAULTS,
            "faithful": False,
            "notes": notes,
        }
