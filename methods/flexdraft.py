"""`flexdraft`: attention tuning + bonus-guided calibration + flex decoding (the product's headline method).

Spec: `../shared/methods/bita_mtp_flexdraft.md` Part E (+ §1.2 for the same-position convention), paper
`../shared/methods/flexdraft_paper.txt` §4. The frozen target *is* the drafter (E.1):

* **Attention tuning** (E.2, paper §4.1). From layer `s = L - N` on, `B` mask rows (one learned vector,
  injected at the input of layer `s`) run through the target's own norms and FFN but with their own
  trainable q/k/v/o (+ Qwen3 q/k norms), initialised from the paired target layer. Clean rows keep the
  frozen projectors, never see mask rows, and are the only rows whose K/V enter the cache: the AR path
  is the target, so verification is lossless. Mask slot `j` predicts the token at its own position
  `q+1+j`; slot 0 sits at the bonus position and is never a draft (§1.2).
* **Bonus-guided calibration** (E.2.4, E.7). `lm_head(hn) + W2 SiLU(W1 [E(bonus); hn])`, evaluated after
  the pass with the **new** bonus (the target's token after the accepted prefix), zero-initialised
  output layer.
* **Flex decoding** (E.5, E.6, E.8, E.9). *parallel*: one pass verifies `[c_0..c_v]` and, in the last N
  layers, drafts one mask group per hypothetical accepted length; the group of the real accepted length
  is selected afterwards. *sequential* (decoupled): verify with a plain target forward, then draft only
  the resolved branch from the clean cache. *flex*: parallel for batch <= `batch_threshold`, else
  sequential. Selective verification (cumulative draft confidence >= `threshold`) in both modes.
* **Training** (E.10, reconstructed): packed draft blocks, many anchors per sequence, bidirectional inside
  a block, clean prefix up to the anchor visible, blocks mutually invisible; the efficient exact forward
  (clean K/V once without gradients, only mask rows through the last N layers); exponentially decayed
  block cross-entropy on the calibrated draft logits (E.10.2; paper §4.2: calibration is trained "under an
  additional cross entropy loss", the ground-truth token standing in for the bonus), plus an optional
  uncalibrated term (`raw_loss_weight`, default 0).

Every deviation from the spec is listed by `FlexDraftMethod.describe()["notes"]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specbench import compiled
from specbench.decode import ActiveRows
from specbench.engine import Proposal, SpeculativeDecoder, verify_chain
from specbench.engine.acceptance import accept_speculative
from specbench.errors import SpecbenchError
from specbench.kv_cache import slot_visibility
from specbench.layers import RMSNorm, attention_shape, clean_cache, joint_layer, mask_row_attention
from specbench.methods.base import SWITCH, Method, integer, number, one_of, option_bool
from specbench.sampling import logits_to_probs, sample
from specbench.training.data import pick_anchors
from specbench.training.drafter import Drafter
from specbench.training.head_loss import chunked_head_terms

#: the paper's / release's operating point (Qwen3-8B on A100, E.2, E.6, E.9)
PAPER_DEFAULTS = {"block_size": 16, "draft_layers": "10 of 36", "gamma": 7.0, "threshold": 0.01,
                  "batch_threshold": 2, "calib_rank": 256}
#: loss decay per block size (DFlash's rule, which FlexDraft follows: paper §4.1); other sizes use B / 2
GAMMA_FOR_BLOCK = {16: 7.0, 10: 5.0, 8: 4.0}
MODES = ("flex", "parallel", "sequential")
#: mask rows per LM-head chunk in training (bounds the `[rows, V]` logits held at once)
HEAD_CHUNK = 4096
#: draft slots per LM-head call at inference when selective verification may stop early
DRAFT_CHUNK = 4


def default_draft_layers(num_layers: int) -> int:
    """A third of the target's layers (10 of 30 for smollm2-135m; the paper uses 10 of 36)."""
    return max(1, round(num_layers / 3))


def default_gamma(block_size: int) -> float:
    return GAMMA_FOR_BLOCK.get(block_size, block_size / 2)


@dataclass
class FlexDraftConfig:
    """Everything needed to rebuild a drafter (saved in its config.json): the target's attention shapes
    and the method's own sizes. `draft_layers` / `gamma` of 0 mean "the default for this target/block"."""

    num_target_layers: int
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention_bias: bool = False
    qk_norm: bool = False  # Qwen3: per-head RMSNorm on q and k before RoPE
    rms_norm_eps: float = 1e-6
    draft_layers: int = 0  # N
    block_size: int = 16  # B: slots 0..B-1, B-1 drafts
    gamma: float = 0.0
    calibration: bool = True
    calib_rank: int = 256
    #: weight of an extra uncalibrated block CE; E.10.2 puts the loss on the calibrated logits alone (0),
    #: the spec's "optionally a small-weight uncalibrated CE" is this knob (stop 17 trained with 1.0)
    raw_loss_weight: float = 0.0
    num_anchors: int = 16  # draft blocks per training sequence

    def __post_init__(self):
        self.draft_layers = int(self.draft_layers) or default_draft_layers(self.num_target_layers)
        self.block_size = int(self.block_size)
        self.gamma = float(self.gamma) or default_gamma(self.block_size)
        if not 1 <= self.draft_layers <= self.num_target_layers:
            raise SpecbenchError(f"draft_layers must be in 1..{self.num_target_layers}, got {self.draft_layers}")
        if self.block_size < 2:
            raise SpecbenchError(f"flexdraft needs a block of at least 2 slots, got {self.block_size}")

    @property
    def split(self) -> int:
        """`s = L - N`: the first layer that carries mask rows (E.2.1)."""
        return self.num_target_layers - self.draft_layers


# -- visibility (E.3) ----------------------------------------------------------------------------------

def mask_visibility(lengths: torch.Tensor, end: int, block_ids: torch.Tensor,
                    pending_see: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys the mask rows see in a deep layer: bool `[B, 1, M, end + M]` (True = visible).

    Keys are the cache slots `0..end-1` followed by the `M` mask rows themselves. Mask row `m` of batch
    row `b` sees the committed slots `< lengths[b]`, the pending clean tokens `j` (slot `lengths[b] + j`)
    with `pending_see[b, m, j]` (`[B or 1, M, q]`; None = no pending tokens), and every mask row with the
    same `block_ids[m]` (bidirectional inside a block, blocks mutually invisible). Covers all layouts:
    parallel step (pending = candidates, block = group), sequential draft (no pending) and training
    (nothing committed, pending = the sequence, block = anchor).
    """
    b, m = lengths.shape[0], block_ids.shape[0]
    ctx = slot_visibility(lengths, end, pending_see).expand(b, m, end)
    own = (block_ids[:, None] == block_ids[None, :]).expand(b, m, m)
    return torch.cat([ctx, own], -1)[:, None]


def parallel_layout(lengths: torch.Tensor, width: int, groups: int, block: int, longest: int | None = None):
    """Mask rows of a parallel step (E.5.2): group `g` <-> "c_0..c_g committed", slot `j` at position
    `start + g + 1 + j`; it sees the cache, candidates `c_0..c_g` and its own group.

    Returns `(positions [B, G*B], visibility [B, 1, G*B, start_max + width + G*B], group ids [G*B])`;
    `longest` is `start_max` when the caller knows it on the host.
    """
    dev = lengths.device
    g = torch.arange(groups, device=dev).repeat_interleave(block)  # [M]
    j = torch.arange(block, device=dev).repeat(groups)
    positions = lengths[:, None] + (g + 1 + j)[None, :]
    pending_see = (torch.arange(width, device=dev)[None, :] <= g[:, None])[None]  # [1, M, width]
    longest = int(lengths.max()) if longest is None else longest
    see = mask_visibility(lengths, longest + width, g, pending_see)
    return positions, see, g


def training_layout(length: int, anchors: torch.Tensor, keep: torch.Tensor, block: int):
    """Packed draft blocks (E.10.1): block `k` (last visible clean token `q_k = anchors[:, k]`) has slots
    at `q_k + 1 .. q_k + B`, sees clean tokens `<= q_k` and its own block only.

    `anchors, keep [N, K]`. Returns `(positions [N, K*B], visibility [N, 1, K*B, length + K*B])`.
    """
    n, k = anchors.shape
    dev = anchors.device
    positions = (anchors[..., None] + 1 + torch.arange(block, device=dev)).reshape(n, k * block)
    see_clean = (torch.arange(length, device=dev)[None, None, :] <= anchors[..., None]) & keep[..., None]  # [N, K, S]
    pending_see = see_clean.repeat_interleave(block, 1)  # [N, K*B, S]
    block_ids = torch.arange(k, device=dev).repeat_interleave(block)
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    return positions, mask_visibility(zeros, length, block_ids, pending_see)


def selective_length(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Drafts to verify per row (E.6, paper eq. 5): `v = #{j : prod_{i<=j} conf_i >= threshold}`,
    clamped to `1..n`; `threshold <= 0` verifies all `n`. `conf [B, n]` -> `[B]`."""
    n = conf.shape[-1]
    if threshold <= 0:
        return torch.full(conf.shape[:-1], n, dtype=torch.long, device=conf.device)
    v = (conf.double().cumprod(-1) >= threshold).long().sum(-1)  # the product never grows: a prefix
    return v.clamp(1, n)


# -- modules ----------------------------------------------------------------------------------------------

class DraftAttention(nn.Module):
    """Mask-row attention of one deep layer (E.2.3): own q/k/v/o (+ q/k norms); keys/values are the
    clean cache content followed by the mask rows' own. `copy_from` is the E.10.4 initialisation."""

    def __init__(self, cfg: FlexDraftConfig):
        super().__init__()
        h, nh, nkv, d, bias = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.attention_bias
        self.head_dim, self.scaling = d, d ** -0.5
        self.q_proj = nn.Linear(h, nh * d, bias=bias)
        self.k_proj = nn.Linear(h, nkv * d, bias=bias)
        self.v_proj = nn.Linear(h, nkv * d, bias=bias)
        self.o_proj = nn.Linear(nh * d, h, bias=bias)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps) if cfg.qk_norm else None

    @torch.no_grad()
    def copy_from(self, attn: nn.Module) -> None:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            mine = getattr(self, name)
            if mine is not None:
                mine.load_state_dict(getattr(attn, name).state_dict())

    def forward(self, h, cos, sin, ctx_k, ctx_v, see):
        """`h [B, M, H]` (input-normed mask rows), `ctx_k/v [B, kv, T, d]`, `see [B, 1, M, T + M]` bool."""
        return mask_row_attention(self, h, cos, sin, ctx_k, ctx_v, see, self.head_dim)


class Calibration(nn.Module):
    """`W2 SiLU(W1 [e; hn] + b1) + b2` (E.2.4): embedding first, final-normed mask state second; the
    output layer starts at zero so training starts from the pure attention drafter (E.10.4)."""

    def __init__(self, hidden: int, rank: int, vocab: int):
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden, rank)
        self.fc2 = nn.Linear(rank, vocab)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, hn: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(torch.cat([e, hn], -1))))


class _TargetParts:
    """The frozen target's pieces the drafter runs (held outside the module tree: never saved, never
    trained); checks that the target is a pre-norm Llama/Qwen-style decoder the layer math fits."""

    def __init__(self, target, cfg: FlexDraftConfig):
        model = target.model
        decoder = getattr(model, "model", None) or model.get_decoder()
        self.layers = decoder.layers
        self.norm = decoder.norm
        self.rotary = decoder.rotary_emb
        self.embed = model.get_input_embeddings()
        self.head = target.head  # the target's LM head under its product rule (`skinny`)
        self.dtype = target.dtype
        if len(self.layers) != cfg.num_target_layers:
            raise SpecbenchError(f"flexdraft drafter built for {cfg.num_target_layers} layers, target has "
                                 f"{len(self.layers)}")
        for i, layer in enumerate(self.layers):
            attn = getattr(layer, "self_attn", None)
            missing = [n for n in ("input_layernorm", "post_attention_layernorm", "mlp") if not hasattr(layer, n)]
            missing += [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if not hasattr(attn, n)]
            if missing:
                raise SpecbenchError(f"flexdraft supports pre-norm Llama/Qwen-style decoders; layer {i} of "
                                     f"{type(model).__name__} lacks {', '.join(missing)}")
            if abs(float(getattr(attn, "scaling", cfg.head_dim ** -0.5)) - cfg.head_dim ** -0.5) > 1e-9:
                raise SpecbenchError("flexdraft assumes attention scaling head_dim**-0.5")
            if cfg.qk_norm != (getattr(attn, "q_norm", None) is not None):
                raise SpecbenchError("flexdraft drafter and target disagree on q/k norms")


class FlexDraftDrafter(Drafter):
    """Mask vector + N draft attentions (+ calibration MLP) on top of a frozen target (E.2).

    `FlexDraftDrafter.for_target(target, **options)` builds one initialised from the target (E.10.4);
    `FlexDraftDrafter.load(path, target)` a trained one. The target's FFN, norms, rotary embedding,
    input embedding and LM head are used through `self.t` and are not parameters of the drafter.
    """

    method = "flexdraft"
    config_class = FlexDraftConfig
    #: the standard CPU budget allows only tens of steps; a higher lr than the shared 1e-3 (mask vector
    #: and calibration start from scratch)
    training_defaults = {"lr": 2e-3}

    def __init__(self, config: FlexDraftConfig):
        super().__init__(config)
        self.t: _TargetParts | None = None
        self.mask_embedding = nn.Parameter(torch.randn(config.hidden_size) * 0.02)  # E.10.4: N(0, 0.02^2)
        self.attn = nn.ModuleList(DraftAttention(config) for _ in range(config.draft_layers))
        self.calibration = (Calibration(config.hidden_size, config.calib_rank, config.vocab_size)
                            if config.calibration else None)

    @classmethod
    def default_config(cls, target, **options) -> FlexDraftConfig:
        """Shapes from the target; `options` set `draft_layers`, `block_size`, `gamma`, `calibration`..."""
        c = target.config
        attn = target.model.get_decoder().layers[0].self_attn
        known = {f for f in FlexDraftConfig.__dataclass_fields__} - {
            "num_target_layers", "hidden_size", "vocab_size", "num_heads", "num_kv_heads", "head_dim",
            "attention_bias", "qk_norm", "rms_norm_eps"}
        unknown = set(options) - known
        if unknown:
            raise SpecbenchError(f"flexdraft drafter options are {', '.join(sorted(known))}; got {sorted(unknown)}")
        return FlexDraftConfig(
            num_target_layers=c.num_hidden_layers, hidden_size=c.hidden_size, vocab_size=target.vocab_size,
            **attention_shape(c), attention_bias=bool(getattr(c, "attention_bias", False)),
            qk_norm=getattr(attn, "q_norm", None) is not None, rms_norm_eps=float(c.rms_norm_eps), **options)

    def attach(self, target) -> "FlexDraftDrafter":
        super().attach(target)
        self.t = _TargetParts(target, self.cfg)
        target.model.requires_grad_(False)  # the AR path stays frozen (E.10.4)
        return self

    def init_from_target(self) -> None:
        """E.10.4: each draft attention starts as a copy of its paired target layer's attention."""
        for i, attn in enumerate(self.attn):
            attn.copy_from(self.t.layers[self.cfg.split + i].self_attn)

    # -- the shared layer math -----------------------------------------------------------------------------
    def _layer(self, l: int, xc, xm, pe_c, mask_c, pe_m, see, cache, end: int):
        """Target layer `l` (`joint_layer`) on clean rows `xc [B, q, H]` and, from layer `s` on, mask rows
        `xm [B, M, H]` through `DraftAttention` over cache slots `0..end-1` (E.2.3)."""

        def attend(hm):
            kv = cache.layers[l]
            return self.attn[l - self.cfg.split](hm, *pe_m, kv.keys[:, :, :end], kv.values[:, :, :end], see)

        return joint_layer(self.t.layers[l], xc, xm, pe_c, mask_c, cache, attend, self.target.skinny_rows)

    def joint_forward(self, ids: torch.Tensor, cache, mask_x=None, mask_pos=None, see=None, intra=None,
                      positions=None):
        """Clean `ids [B, q]` as pending tokens of `cache` (causal, or `intra`) through all layers, plus
        mask rows `mask_x [B, M, H]` entering at layer `s` (positions `mask_pos [B, M]`, visibility `see`).
        `positions` given: the caller did `cache.begin_write` (host bookkeeping kept out of a captured pass).

        Returns `(logits [B, q, V], mask hidden [B, M, H] or None)`; mask hidden states are the last
        layer's output before the final norm. Only clean K/V are written to the cache (E.2.3).
        """
        if positions is None:
            positions = cache.begin_write(ids.shape[1])
        end = cache.view_end
        mask_c = cache.attention_mask(intra, self.t.dtype)
        x = self.t.embed(ids)
        pe_c = self.t.rotary(x, positions)
        pe_m = self.t.rotary(x, mask_pos) if mask_x is not None else None
        xm = None
        for l in range(len(self.t.layers)):
            if l == self.cfg.split and mask_x is not None:
                xm = mask_x
            x, xm = self._layer(l, x, xm, pe_c, mask_c, pe_m, see, cache, end)
        return self.t.head(self.t.norm(x)), xm

    def mask_forward(self, cache, end: int, mask_x, mask_pos, see):
        """Mask rows alone through the deep layers over cache slots `0..end-1` (read-only): the
        sequential draft (E.8) and the efficient training forward (E.10.3)."""
        pe_m = self.t.rotary(mask_x, mask_pos)
        xm = mask_x
        for l in range(self.cfg.split, len(self.t.layers)):
            _, xm = self._layer(l, None, xm, None, None, pe_m, see, cache, end)
        return xm

    def mask_rows(self, batch: int, rows: int) -> torch.Tensor:
        """The one learned mask vector, repeated: `[batch, rows, H]` (E.2.1)."""
        return self.mask_embedding.expand(batch, rows, -1)

    def draft_logits(self, h: torch.Tensor, bonus: torch.Tensor | None, calibrate: bool = True):
        """Draft logits of mask states `h [B, n, H]` (pre-norm): `lm_head(hn)` plus, with calibration,
        the bias from `[E(bonus); hn]`; `bonus [B]` or `[B, n]` (E.7)."""
        hn = self.t.norm(h)
        z = self.t.head(hn)
        if calibrate and self.calibration is not None:
            e = self.t.embed(bonus)
            if e.dim() == 2:
                e = e[:, None].expand_as(hn)
            z = z + self.calibration(hn, e)
        return z

    # -- training (E.10) ----------------------------------------------------------------------------------
    def sample_anchors(self, loss_mask: torch.Tensor, lengths: torch.Tensor, generator=None):
        """Up to `num_anchors` distinct sorted anchors `q` per row with `x_{q+1}` and `x_{q+2}` response
        tokens (E.10.1); `(anchors [N, K], keep [N, K])`, padded with `keep = False`."""
        s = loss_mask.shape[1]
        lm = loss_mask.bool()
        pos = torch.arange(s, device=lm.device)
        ok = torch.zeros_like(lm)
        ok[:, : s - 2] = lm[:, 1 : s - 1] & lm[:, 2:]
        ok &= (pos[None, :] + 2) < lengths[:, None]
        return pick_anchors(ok, self.cfg.num_anchors, generator)

    def clean_cache(self, input_ids: torch.Tensor):
        """The efficient forward's first half (E.10.3): every layer's clean K/V (after k-norm and RoPE,
        i.e. the cache content) from one causal target pass without gradients."""
        return clean_cache(self.t.layers, self.t.embed, self.t.rotary, input_ids)

    def packed_forward(self, input_ids, anchors, keep, cache=None):
        """Mask hidden states `[N, K, B, H]` of all packed blocks (E.10.1 layout, E.10.3 forward)."""
        n, s = input_ids.shape
        bs = self.cfg.block_size
        cache = cache if cache is not None else self.clean_cache(input_ids)
        positions, see = training_layout(s, anchors, keep, bs)
        h = self.mask_forward(cache, s, self.mask_rows(n, positions.shape[1]), positions, see)
        return h.view(n, anchors.shape[1], bs, -1)

    def _head_losses(self, hn, e, target, w):
        """Weighted CE sums (raw, calibrated) and top-1 hits of one chunk of mask rows."""
        raw = self.t.head(hn).float()
        ce_raw = (w * F.cross_entropy(raw, target, reduction="none")).sum()
        hit_raw = raw.argmax(-1) == target
        if self.calibration is None:
            return (ce_raw, ce_raw), (hit_raw, hit_raw)
        cal = raw + self.calibration(hn, e).float()
        return (ce_raw, (w * F.cross_entropy(cal, target, reduction="none")).sum()), (hit_raw, cal.argmax(-1) == target)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Decayed block cross-entropy (E.10.2): slot `j >= 1` of the block after anchor `q` predicts
        `x_{q+1+j}` with weight `exp(-(j-1)/gamma)`; slot 0 (the bonus position) carries no loss. With
        calibration the loss is `CE(calibrated)` (E.10.2) plus `raw_loss_weight * CE(raw)` (default 0), the
        calibration seeing the ground-truth `x_{q+1}` as the bonus (paper §4.2).

        `batch`: `input_ids [N, S]`, `loss_mask [N, S]` (response tokens), optional `lengths [N]`,
        `anchors`/`anchor_keep [N, K]`.
        """
        ids, lm = batch["input_ids"], batch["loss_mask"].bool()
        n, s = ids.shape
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((n,), s, device=ids.device)
        anchors, keep = batch.get("anchors"), batch.get("anchor_keep")
        if anchors is None:
            anchors, keep = self.sample_anchors(lm, lengths, generator)
        bs = self.cfg.block_size
        h = self.packed_forward(ids, anchors, keep)  # [N, K, B, H]
        j = torch.arange(bs, device=ids.device)
        pos = anchors[..., None] + 1 + j  # [N, K, B]
        at = pos.clamp(max=s - 1).flatten(1)
        labels = ids.gather(1, at).view_as(pos)
        valid = keep[..., None] & (j >= 1) & (pos < lengths[:, None, None]) & lm.gather(1, at).view_as(pos)
        w = torch.exp(-(j - 1).clamp_min(0).float() / self.cfg.gamma).expand_as(valid)[valid]
        target = labels[valid]
        bonus = ids.gather(1, (anchors + 1).clamp(max=s - 1))[..., None].expand_as(pos)[valid]  # x_{q+1}
        hn = self.t.norm(h[valid])  # [R, H]
        e = self.t.embed(bonus)
        sums, (hits_raw, hits) = chunked_head_terms(self._head_losses, hn, e, target, w, chunk=HEAD_CHUNK)
        norm = w.sum().clamp_min(1e-9)
        loss_raw, loss_cal = sums[0] / norm, sums[1] / norm
        loss = loss_raw if self.calibration is None else self.cfg.raw_loss_weight * loss_raw + loss_cal
        with torch.no_grad():
            hit = torch.zeros_like(valid)
            hit[valid] = hits
            chain = (hit | ~valid)[..., 1:].long().cumprod(-1).bool() & valid[..., 1:]  # accepted prefix
            n_valid = valid.sum().clamp_min(1)
            metrics = {"loss": float(loss), "loss_raw": float(loss_raw), "acc": float(hit.sum() / n_valid),
                       "acc_raw": float(hits_raw.sum() / n_valid),
                       "tau_estimate": float(chain.sum() / keep.sum().clamp_min(1) + 1), "blocks": int(keep.sum())}
        return loss, metrics

    # -- save / load --------------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy_accept_lengths(self, input_ids, starts, lengths, calibrate: bool = True, threshold: float = 0.0):
        """Tokens committed per step when greedy FlexDraft decoding reproduces `input_ids`, whose tokens
        from `starts[b]` (the prefill's token) to `lengths[b] - 1` are the target's greedy output.

        Teacher-forced and exact at T = 0: one clean pass gives every prefix's cache (causal), then each
        step is one sequential draft (E.8) over the committed prefix; parallel mode drafts the same tokens
        (E.12-4), so this is the tau of every mode. Costs one mask pass per step instead of a target
        forward: a cheap held-out tau for training evals and ablations. Returns a list per row.
        """
        n, s = input_ids.shape
        bs = self.cfg.block_size
        dev = input_ids.device
        cache = self.clean_cache(input_ids)
        start = starts.to(dev).clone()  # position of the bonus (last emitted token), per row
        lengths = lengths.to(dev)
        j = torch.arange(bs - 1, device=dev)
        steps: list[list[int]] = [[] for _ in range(n)]
        while bool((start < lengths - 1).any()):
            active = start < lengths - 1
            see = mask_visibility(start, int(start.max()), torch.zeros(bs, dtype=torch.long, device=dev))
            positions = start[:, None] + torch.arange(bs, device=dev)
            h = self.mask_forward(cache, int(start.max()), self.mask_rows(n, bs), positions, see)
            bonus = input_ids.gather(1, start.clamp(max=s - 1)[:, None])[:, 0]
            z = self.draft_logits(h[:, 1:], bonus, calibrate).float()
            v = selective_length(z.softmax(-1).amax(-1), threshold)
            at = start[:, None] + 1 + j  # draft positions; the step's bonus must exist too
            valid = (j[None, :] < v[:, None]) & (at < lengths[:, None] - 1)
            truth = input_ids.gather(1, at.clamp(max=s - 1))
            accepted = ((z.argmax(-1) == truth) & valid).long().cumprod(1).sum(1)
            for b in active.nonzero().flatten().tolist():
                steps[b].append(int(accepted[b]) + 1)
            start = torch.where(active, start + accepted + 1, start)
        return steps

    def parameter_counts(self) -> dict:
        attn = sum(p.numel() for p in self.attn.parameters())
        calib = sum(p.numel() for p in self.calibration.parameters()) if self.calibration is not None else 0
        return {"attention": attn, "mask_embedding": self.mask_embedding.numel(), "calibration": calib,
                "total": attn + calib + self.mask_embedding.numel()}


# -- decoding (E.4 - E.9) ----------------------------------------------------------------------------------

class FlexDraftDecoder(SpeculativeDecoder):
    """Parallel, sequential or flex decoding with one shared draft state per row: the bonus `last`
    (not yet in the cache), drafts `[B, B-1]`, their distributions (sampled drafts only) and `v`, the
    number of drafts to verify (E.9: both modes consume the same state, so switching needs nothing).

    Verification and acceptance are the engine's `verify_chain`; only the drafting differs by mode.
    """

    rule = staticmethod(accept_speculative)

    def __init__(self, target, sampling, generator, drafter: FlexDraftDrafter, block: int, mode: str = "flex",
                 calibration: bool = True, threshold: float = 0.01, batch_threshold: int = 2,
                 draft_sampling: str = "greedy"):
        super().__init__(target, sampling, generator, depth=block - 1)
        self.drafter, self.block, self.mode = drafter, int(block), mode
        self.calibration, self.threshold, self.batch_threshold = calibration, float(threshold), int(batch_threshold)
        self.sample_drafts = draft_sampling == "sample" and not sampling.greedy
        self.modes_used: list[str] = []

    def mode_for(self, batch: int) -> str:
        """E.9: parallel at batch <= threshold, sequential above. The batch is the number of rows still
        decoding: a stopped row drafts and commits nothing (issue 19), so it is no load to switch on."""
        if self.mode != "flex":
            return self.mode
        return "parallel" if batch <= self.batch_threshold else "sequential"

    # -- drafting -------------------------------------------------------------------------------------------
    def _set_drafts(self, h: torch.Tensor, bonus: torch.Tensor, stop_early: bool = True) -> None:
        """Drafts from mask states `h [B, B-1, H]` (slots 1..B-1) calibrated with the new `bonus [B]`;
        `v` from the calibrated confidences (E.6: calibration happens before pruning).

        With pruning, slots go through the LM head and calibration `DRAFT_CHUNK` at a time and stop once
        every row's cumulative confidence is below the threshold: later slots can never be verified
        (E.6 [recon]: computing them is waste), so `v` and the verified drafts are unchanged.
        """
        b, n, _ = h.shape
        if h.stride() != (n * h.shape[2], h.shape[2], 1):  # one layout from both modes (a slice of the block,
            h = h.clone(memory_format=torch.contiguous_format)  # or gathered groups): one captured head graph
        chunk = n if self.threshold <= 0 else DRAFT_CHUNK
        conf = torch.zeros(b, n, device=h.device)
        drafts = torch.zeros(b, n, dtype=torch.long, device=h.device)
        probs = None
        running = torch.ones(b, device=h.device, dtype=torch.float64)
        for i in range(0, n, chunk):
            z = compiled.run(self.target, self.drafter.draft_logits, h[:, i:i + chunk], bonus,
                             calibrate=self.calibration).float()
            c = z.softmax(-1).amax(-1)  # raw-logit softmax (E.11-9)
            conf[:, i:i + chunk] = c
            if self.sample_drafts:
                q = logits_to_probs(z, self.sampling)
                if probs is None:
                    probs = torch.zeros(b, n, q.shape[-1], device=h.device)
                probs[:, i:i + chunk] = q
                drafts[:, i:i + chunk] = sample(q, self.generator)
            else:
                drafts[:, i:i + chunk] = z.argmax(-1)
            running = running * c.double().prod(-1)
            if stop_early and self.threshold > 0 and bool((running < self.threshold).all()):
                break
        self.v = selective_length(conf, self.threshold)
        self.v_max = int(self.v.max())  # the verify width, needed on the host
        self.drafts, self.draft_probs = drafts, probs

    @torch.inference_mode()
    def _draft_sequential(self, bonus: torch.Tensor) -> None:
        """E.8: one block of B mask rows at `start .. start+B-1` (`start` = cache length = the bonus
        position) over the committed cache, read-only; the bonus enters only through calibration. A
        static cache is read over its whole capacity (fixed shapes; the mask hides the spare slots)."""
        end = self.cache.capacity if self.cache.static else max(self.cache.lengths)
        h = compiled.run(self.target, self._sequential_pass, end)
        self._set_drafts(h[:, 1:], bonus)

    def _sequential_pass(self, end: int) -> torch.Tensor:
        """The mask block's states `[B, B, H]` over cache slots `0..end-1` (E.8; captured whole when compiled)."""
        lengths, bs = self.cache.device_lengths, self.block
        positions = lengths[:, None] + torch.arange(bs, device=lengths.device)
        see = mask_visibility(lengths, end, torch.zeros(bs, dtype=torch.long, device=lengths.device))
        return self.drafter.mask_forward(self.cache, end, self.drafter.mask_rows(len(lengths), bs), positions, see)

    @torch.inference_mode()
    def _parallel_forward(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """E.5: verify `ids = [c_0..c_{W-1}]` and draft one group per hypothesis `g < W` in one pass;
        keeps the groups' states `[B, G, B, H]` for the selection after acceptance. The cache's host
        bookkeeping (`begin_write`) stays outside the pass, which is captured whole when compiled."""
        positions = cache.begin_write(ids.shape[1])
        logits, self._groups = compiled.run(self.target, self._parallel_pass, ids, cache, positions)
        return logits

    def _parallel_pass(self, ids: torch.Tensor, cache, positions: torch.Tensor):
        b, w = ids.shape
        mask_pos, see, _ = parallel_layout(cache.device_lengths, w, w, self.block, cache.view_end - w)
        logits, hm = self.drafter.joint_forward(ids, cache, self.drafter.mask_rows(b, w * self.block), mask_pos, see,
                                                positions=positions)
        return logits, hm.view(b, w, self.block, -1)

    def warm_shapes(self) -> None:
        """Every padded verify width in each mode this batch may use (flex switches to parallel when rows
        stop), and the draft head's chunk widths (a step that stops early never reaches the last chunk).
        Inputs are made as a step makes them (dynamo guards on strides and on inference-tensor-ness)."""
        b, n = self.drafts.shape
        modes = {"parallel", "sequential"} if self.mode == "flex" else {self.mode}
        for w in sorted({compiled.width(self.target, v, n) for v in range(1, n + 1)}):
            ids = torch.cat([self.last[:, None], self.drafts[:, :w]], 1)  # as `verify_chain` builds them
            for mode in sorted(modes):
                (self._parallel_forward if mode == "parallel" else self.target.forward)(ids, self.cache)
        self._groups = None
        with torch.inference_mode():
            self._set_drafts(torch.zeros(b, n, self.drafter.cfg.hidden_size, dtype=self.target.dtype,
                                         device=self.target.device), self.last, stop_early=False)

    # -- Decoder API ------------------------------------------------------------------------------------------
    def on_prefill(self, logits):
        """E.4's mask block over the prompt is exactly the sequential layout with `start = n` (E.8), so
        the prefill is the engine's (AR-identical) one followed by one sequential draft."""
        self._draft_sequential(self.last)

    def step(self, timer, active):
        active = ActiveRows.of(active, self.target.device)
        v = self.v if active.all else torch.where(active.device, self.v, torch.zeros_like(self.v))
        w = compiled.width(self.target, max(1, self.v_max), self.drafts.shape[1])
        probs = None if self.draft_probs is None else self.draft_probs[:, :w]
        proposal = Proposal(self.drafts[:, :w], v, probs)  # drafts verified per row (selective verification)
        mode = self.mode_for(sum(active.host))
        self.modes_used.append(mode)
        forward = self._parallel_forward if mode == "parallel" else None
        result = verify_chain(self.target, self.cache, self.last, proposal, self.sampling, self.generator,
                              forward=forward, timer=timer, rule=self.rule,
                              active=None if active.all else active.device)
        with timer.span("draft"), torch.inference_mode():
            if mode == "parallel":
                rows = torch.arange(len(active.host), device=result.bonus.device)
                self._set_drafts(self._groups[rows, result.n_accepted, 1:], result.bonus)
                self._groups = None
            else:
                self._draft_sequential(result.bonus)
        return self._finish(result, active)


# -- the method ------------------------------------------------------------------------------------------

def _spell_out(options: dict) -> dict:
    """`no_calibration=true` (the paper's `--no-calibration` ablation) is `calibration=false`."""
    options = dict(options)
    if option_bool(options.pop("no_calibration", False), "no_calibration"):
        options["calibration"] = False
    return options


class FlexDraftMethod(Method):
    """Decode options (`-o KEY=VALUE`): `mode` flex|parallel|sequential, `calibration` (false = the
    `--no-calibration` ablation), `threshold` (selective verification; 0 = verify all), `batch_threshold`
    (flex switch), `draft_sampling` greedy|sample (T > 0). Drafter options (`draft_layers`, `block_size`,
    `gamma`, `calib_rank`, ...) choose the drafter for `--drafter auto` and must match a given one."""

    name = "flexdraft"
    description = ("FlexDraft: attention-tuned last-N-layer drafting + bonus-guided calibration + flex "
                   "(parallel/sequential) decoding with selective verification")
    needs_drafter = True
    default_depth = None  # the drafter's trained block size
    drafter_class = FlexDraftDrafter
    DECODE_OPTIONS = {"mode": "flex", "calibration": True, "threshold": 0.01, "batch_threshold": None,
                      "draft_sampling": "greedy"}
    OPTION_KINDS = {"mode": one_of(*MODES), "calibration": SWITCH, "threshold": number(0),
                    "batch_threshold": integer(0), "draft_sampling": one_of("greedy", "sample")}
    #: flex switch (E.9): the paper drafts inside the verify pass while a small batch leaves a GPU idle
    #: (batch <= 2); 2 CPU cores have no idle compute at any batch, and the fused pass lost at batch 1
    #: (gsm8k b1: parallel 0.36x, sequential 0.39x, CIs apart; `.notes/flexdraft.md`), so CPU flex is
    #: sequential throughout.
    BATCH_THRESHOLD = {"cuda": 2, "cpu": 0}
    DRAFTER_OPTIONS = ("draft_layers", "block_size", "gamma", "calibration", "calib_rank", "raw_loss_weight",
                       "num_anchors")
    COMPILED_PASSES = {"captured": ["joint pass (verify + one mask group per hypothesis; parallel mode)",
                                     "target verify (sequential mode)", "sequential mask pass (static cache)",
                                     "draft LM head + calibration, per chunk"],
                       "eager": ["prefill", "selective verification's early stop (a host read per chunk)"],
                       "shapes": "verify width padded to a power of two (drafts past a row's v are not verified; "
                                 "at T > 0 acceptance draws uniforms for the padded columns too: another random "
                                 "stream than eager's, the same distribution)"}

    def __init__(self, target, depth: int | None = None, drafter=None, **options):
        options = _spell_out(options)
        opts = self.split_options(options)
        if opts["batch_threshold"] is None:
            opts["batch_threshold"] = self.BATCH_THRESHOLD.get(target.device.type, 2)
        super().__init__(target, depth=depth, **options)
        self.opts = opts
        self.attach_drafter(drafter)
        cfg = self.drafter.cfg
        if opts["calibration"] and not cfg.calibration:
            opts["calibration"] = False  # an attention-only drafter has no calibration head
        if self.depth is None:
            self.depth = cfg.block_size
        if self.depth < 2:
            raise SpecbenchError(f"flexdraft needs --depth >= 2 (block slots), got {self.depth}")

    @classmethod
    def split_options(cls, options: dict) -> dict:
        return super().split_options(_spell_out(options))

    def make_decoder(self, sampling, generator):
        o = self.opts
        return FlexDraftDecoder(self.target, sampling, generator, self.drafter, self.depth, mode=o["mode"],
                                calibration=o["calibration"], threshold=o["threshold"],
                                batch_threshold=o["batch_threshold"], draft_sampling=o["draft_sampling"])

    def describe(self) -> dict:
        cfg, o, bs = self.drafter.cfg, self.opts, self.depth
        n_layers = cfg.num_target_layers
        counts = self.drafter.parameter_counts()
        notes = [
            f"training is reconstructed (E.10 [recon]): {cfg.num_anchors} packed anchors per sequence (DFlash, "
            "whose rule E.10.1 follows, samples up to 512), slot 0 without loss, loss = CE(calibrated)"
            + (f" + {cfg.raw_loss_weight:g} * CE(raw) (E.10.2: calibrated only)" if cfg.raw_loss_weight else
               " (E.10.2)"),
            "sequential (decoupled) mode is reconstructed (E.8): verify with a plain target forward, then one "
            "mask block over the committed cache; the bonus enters only through calibration",
            "parallel mode with selective verification feeds only c_0..c_v and builds v+1 groups (E.6 [recon]); "
            "in a batch v is the maximum over rows, rows accept up to their own v",
            "batch > 1 with per-row acceptance and per-row cache lengths (the release is effectively batch 1)",
            "flex switch counts the rows still decoding each step (a stopped row drafts and commits nothing)",
            f"flex: parallel at batch <= {o['batch_threshold']} (default 2 on GPU as in the paper, 0 on CPU where "
            "the fused pass measured slower at batch 1)",
            "prefill = the engine's target prefill + one sequential draft, identical to E.4's fused prefill",
            "parallel mode: drafting happens inside the verify pass (timed as verify); the post-pass LM head "
            "and calibration of the selected group are timed as draft",
            "T > 0: " + ("drafts sampled from the calibrated draft distribution, accepted by speculative "
                         "sampling with q" if o["draft_sampling"] == "sample" else
                         "greedy drafts, one-hot acceptance (release: sample-and-match, also lossless)"),
        ]
        if bs != cfg.block_size:
            notes.append(f"inference block {bs} differs from the trained block {cfg.block_size}")
        if not o["calibration"] and cfg.calibration:
            notes.append("calibration switched off at inference (ablation): raw attention-drafter logits")
        n_ratio = cfg.draft_layers / n_layers  # a deep-layer-only row costs this fraction of a full token
        per_forward = {"parallel": bs + bs * bs * n_ratio, "sequential": bs + bs * n_ratio}
        batch1 = "parallel" if o["mode"] == "parallel" or (o["mode"] == "flex" and o["batch_threshold"] >= 1) \
            else "sequential"
        return {
            "name": self.name, "depth": bs, "options": dict(o),
            "drafter": self.drafter_path, "drafter_parameters": counts["total"],
            # full-depth token equivalents per step at batch 1 without pruning (verified + mask rows)
            "tokens_per_target_forward": round(per_forward[batch1], 1),
            "mask_rows_per_pass": bs * bs if batch1 == "parallel" else bs,
            "draft_layers": cfg.draft_layers,
            "cost_detail": {"parameter_split": counts,
                            "fraction_of_target": counts["total"] / sum(p.numel() for p in self.target.model.parameters()),
                            "full_depth_tokens_per_step": {k: round(v, 1) for k, v in per_forward.items()},
                            "note": "worst case v = B-1; selective verification shrinks both modes"},
            "drafter_config": {"block_size": cfg.block_size, "draft_layers": cfg.draft_layers, "split_layer": cfg.split,
                               "calibration": cfg.calibration, "calib_rank": cfg.calib_rank, "gamma": cfg.gamma,
                               "raw_loss_weight": cfg.raw_loss_weight, "num_anchors": cfg.num_anchors},
            "paper_defaults": PAPER_DEFAULTS,
            "faithful": False,
            "notes": notes,
        }
