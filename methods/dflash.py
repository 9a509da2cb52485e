"""`dflash`: a block-diffusion drafter conditioned on target features (KV injection).

Spec: `../shared/methods/eagle3_dflash.md` Part B. One non-causal drafter pass proposes a whole block:
the block is `[bonus, MASK x (B-1)]`, its queries attend bidirectionally to each other and to keys /
values projected per layer from fused target features of the committed context (B.1). The drafter owns
no embedding and no LM head; it borrows the frozen target's (B.1.3, B.5-8). Drafts are greedy at every
temperature, so acceptance is the one-hot rule and stays lossless (B.3, B.5-10).

Faithful to the spec: layer-id rule (B.1.1), fc-then-norm fusion shared by all layers (B.5-9),
Qwen3-style draft layers with q/k norms (B.1.2), the B.2.2 training layout (random response anchors,
context strictly before the anchor, bidirectional inside a block, same-position labels, decayed CE
with `w_k = exp(-(k-1)/gamma)`), and the B.3 loop. Differences, all recorded by `describe()`:

* batches > 1 keep a per-row draft cache (`RowKVCache`), as B.5-15 requires of any batched version;
* the block's keys/values are never written into the draft cache, which is the same as writing them
  and cropping after every draft call (B.5-4);
* the prompt's context K/V are projected in `prefill` (the "draft prefill" that B.4 excludes from
  decode time) rather than inside the first draft call;
* the mask token is a learned drafter-owned row when the target has no unused special token (B.1.3
  assumes one exists).

Paper defaults (GPU): 5 draft layers, block 16, gamma 7. CPU defaults for `smollm2-135m` are chosen
by measurement and stated in `CPU_DEFAULTS`. Anchors per training sequence follow the training-size rule
of `specbench.training.budget` (issue 19; the measurement is there): 16, was 64 before 2026-12-03. These
defaults apply on every device unless options say otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specbench import compiled
from specbench.engine import ChainSpeculativeDecoder, Proposal
from specbench.kv_cache import RowKVCache
from specbench.layers import DecoderLayerShape, RMSNorm, apply_rotary, rotary
from specbench.methods.base import Method
from specbench.skinny import product
from specbench.training.data import pick_anchors
from specbench.training.drafter import Drafter

PAPER_DEFAULTS = {"num_layers": 5, "block_size": 16, "gamma": 7.0, "num_anchors": 512}
#: what wins on 2 CPU cores for smollm2-135m (layers, block: README "Measured"; anchors: training/budget.py)
CPU_DEFAULTS = {"num_layers": 2, "num_feature_layers": 5, "block_size": 8, "num_anchors": 16}
#: loss decay per block size suggested with the paper (B.2.2 step 7); other sizes use B / 2
GAMMA_FOR_BLOCK = {16: 7.0, 10: 5.0, 8: 4.0}


# -- configuration -------------------------------------------------------------------------------------

def build_target_layer_ids(num_target_layers: int, num_feature_layers: int) -> list[int]:
    """Evenly spaced 0-based "output of layer" ids from layer 1 to N-3 (B.1.1, Python round).

    Clamped to real layers and without repeats, which only matters for toy targets (N < L + 4).
    """
    n = num_target_layers
    if num_feature_layers == 1:
        return [n // 2]
    span = n - 4
    ids = [int(round(1 + i * span / (num_feature_layers - 1))) for i in range(num_feature_layers)]
    return list(dict.fromkeys(min(max(i, 0), n - 1) for i in ids))


def default_gamma(block_size: int) -> float:
    return GAMMA_FOR_BLOCK.get(block_size, block_size / 2)


def choose_mask_token(tokenizer, embedding_rows: int) -> tuple[int | None, str | None]:
    """The target's own unused token for MASK (B.1.3), or (None, None) for a learned drafter row.

    Only rows the target never saw in use qualify: an embedding row the tokenizer never produces
    (Qwen3: 151669), then a special token named reserved/unused (Llama-3: `<|reserved_special_token_0|>`).
    Any other special token (SmolLM2's `<repo_name>`, Qwen3's `<think>`) was used in pretraining or
    templates, so its embedding carries meaning B.1.3 does not want; those targets get a learned row.
    """
    n_tok = len(tokenizer)
    if embedding_rows > n_tok:
        return n_tok, None
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials = sorted((i, t.content) for i, t in added.items() if getattr(t, "special", False) and i < embedding_rows)
    for i, text in specials:
        if re.search(r"reserved|unused", text, re.I):
            return i, text
    return None, None


@dataclass
class DFlashConfig(DecoderLayerShape):
    """Everything needed to rebuild a drafter; saved as JSON next to the weights."""

    num_layers: int
    block_size: int
    target_layer_ids: list[int]
    mask_token_id: int | None  # None: the learned `mask_embedding` row
    mask_token: str | None
    gamma: float
    num_anchors: int

    @property
    def mask_source(self) -> str:
        return "learned drafter row" if self.mask_token_id is None else "target token"

    @classmethod
    def for_target(cls, target, num_layers: int | None = None, block_size: int | None = None,
                   num_feature_layers: int | None = None, mask_token: str | int | None = "auto",
                   **fields) -> "DFlashConfig":
        """Draft dimensions equal the target's (B.1.2); CPU defaults unless overridden.

        `mask_token`: "auto" (`choose_mask_token`), "learned", or a token id. Any other config field
        (`gamma`, `num_anchors`, `target_layer_ids`, ...) may be given directly.
        """
        c = target.config
        layers = num_layers or CPU_DEFAULTS["num_layers"]
        block = block_size or CPU_DEFAULTS["block_size"]
        if mask_token == "auto":
            mask_id, mask_text = choose_mask_token(target.tokenizer, target.model.get_input_embeddings().weight.shape[0])
        elif mask_token in (None, "learned"):
            mask_id, mask_text = None, None
        else:
            mask_id = int(mask_token)
            mask_text = target.tokenizer.convert_ids_to_tokens(mask_id)
        if fields.get("target_layer_ids") is None:
            fields["target_layer_ids"] = build_target_layer_ids(
                c.num_hidden_layers, num_feature_layers or CPU_DEFAULTS["num_feature_layers"])
        if fields.get("gamma") is None:
            fields["gamma"] = default_gamma(block)
        if fields.get("num_anchors") is None:
            fields["num_anchors"] = CPU_DEFAULTS["num_anchors"]
        if fields.get("mask_token_id") is not None:
            mask_id = int(fields["mask_token_id"])
            mask_text = target.tokenizer.convert_ids_to_tokens(mask_id) if mask_id < len(target.tokenizer) else None
        fields["mask_token_id"] = mask_id
        base = dict(DecoderLayerShape.of_target(c), num_layers=layers, block_size=block, mask_token=mask_text)
        base.update(fields)
        base["target_layer_ids"] = [int(i) for i in base["target_layer_ids"]]
        return cls(**base)


# -- drafter modules -----------------------------------------------------------------------------------

class DFlashLayer(nn.Module):
    """One Qwen3-style layer whose keys/values are the injected context plus the block's own (B.1.2).

    Context positions contribute only keys/values, projected from the shared fused feature `C`;
    they have no residual stream. k_norm applies to context and block keys alike (B.5-9).
    """

    def __init__(self, cfg: DFlashConfig):
        super().__init__()
        h, nh, nkv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.nh, self.nkv, self.d = nh, nkv, d
        self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(h, nh * d, bias=False)
        self.k_proj = nn.Linear(h, nkv * d, bias=False)
        self.v_proj = nn.Linear(h, nkv * d, bias=False)
        self.o_proj = nn.Linear(nh * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, h, bias=False)

    def _kv(self, x, cos, sin):
        b, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, t, self.nkv, self.d)).transpose(1, 2)  # [B, kv, t, d]
        v = self.v_proj(x).view(b, t, self.nkv, self.d).transpose(1, 2)
        return apply_rotary(k, cos, sin), v

    def context_kv(self, ctx, cos, sin):
        """Keys/values of context features `ctx [B, T, H]` at their positions."""
        return self._kv(ctx, cos, sin)

    def forward(self, x, ctx_k, ctx_v, cos_q, sin_q, mask):
        """`x [B, Q, H]` block stream; `ctx_k/v [B, kv, T, d]`; `mask [B, 1, Q, T + Q]` bool."""
        b, q, _ = x.shape
        xn = self.input_layernorm(x)
        query = self.q_norm(self.q_proj(xn).view(b, q, self.nh, self.d)).transpose(1, 2)  # [B, h, Q, d]
        query = apply_rotary(query, cos_q, sin_q)
        blk_k, blk_v = self._kv(xn, cos_q, sin_q)
        keys = torch.cat([ctx_k, blk_k], 2)
        values = torch.cat([ctx_v, blk_v], 2)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=self.nkv != self.nh)
        x = x + self.o_proj(out.transpose(1, 2).reshape(b, q, self.nh * self.d))
        hn = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(hn)) * self.up_proj(hn))


class DFlashDrafter(Drafter):
    """fc + hidden_norm over fused target features, `num_layers` DFlash layers, final norm (B.1).

    The target's embedding and LM head are used through `attach(target)` and never become parameters
    of the drafter (frozen, not saved; B.5-8). With no usable target token for MASK the drafter owns
    one learned embedding row, `mask_embedding`. Trained by the shared trainer: the paper's optimiser
    settings (B.2.3: lr 6e-4, warm-up 4 %, clip 1.0) on the standard data and budget.
    """

    method = "dflash"
    config_class = DFlashConfig
    training_defaults = {"lr": 6e-4, "warmup_ratio": 0.04, "grad_clip": 1.0}

    def __init__(self, config: DFlashConfig):
        super().__init__(config)
        cfg = config
        n_feat = len(cfg.target_layer_ids)
        self.fc = nn.Linear(n_feat * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.mask_token_id is None:
            self.mask_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self._frozen: tuple = ()
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)

    @classmethod
    def default_config(cls, target, **options) -> DFlashConfig:
        return DFlashConfig.for_target(target, **options)

    def feature_layers(self) -> list[int]:
        return list(self.cfg.target_layer_ids)

    def init_from_target(self) -> None:
        self.init_mask_embedding()

    # -- target coupling --------------------------------------------------------------------------------
    def attach(self, target) -> "DFlashDrafter":
        """Bind to the target and borrow its embedding and LM head (detached: frozen, B.1.3)."""
        super().attach(target)
        embed = target.model.get_input_embeddings().weight.detach()
        head = target.model.get_output_embeddings().weight.detach()
        self._frozen = (embed, head)
        return self

    def init_mask_embedding(self) -> None:
        """Start a learned MASK row at the mean target embedding (a neutral, in-distribution vector)."""
        if self.cfg.mask_token_id is None:
            with torch.no_grad():
                self.mask_embedding.copy_(self._frozen[0].float().mean(0).to(self.mask_embedding.dtype))

    def embed_block(self, anchor_ids: torch.Tensor, block_size: int) -> torch.Tensor:
        """Embeddings of `[anchor, MASK x (B-1)]` per block; `anchor_ids [...]` -> `[..., B, H]`."""
        embed = self._frozen[0]
        first = F.embedding(anchor_ids, embed)[..., None, :]
        if self.cfg.mask_token_id is None:
            mask = self.mask_embedding.to(embed.dtype)
        else:
            mask = embed[self.cfg.mask_token_id]
        rest = mask.expand(*anchor_ids.shape, block_size - 1, mask.shape[-1])
        return torch.cat([first, rest], -2)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return product(self._frozen[1], None, h, self.target.skinny_rows)  # the target's product rule

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """`C = hidden_norm(fc(C_raw))`: projection first, norm after (B.5-9)."""
        return self.hidden_norm(self.fc(features))

    def run_layers(self, x, ctx_kv, positions, mask):
        """Block stream through all layers given per-layer context K/V; returns `norm(x)`."""
        cos, sin = rotary(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for layer, (k, v) in zip(self.layers, ctx_kv):
            x = layer(x, k, v, cos, sin, mask)
        return self.norm(x)

    # -- training (B.2.2) ----------------------------------------------------------------------------
    def sample_anchors(self, input_ids, loss_mask, lengths, generator=None):
        """Up to `num_anchors` sorted response anchors per row, padded; `(anchors [N, n], keep [N, n])`."""
        s = input_ids.shape[1]
        valid = loss_mask.bool().clone()
        valid[:, :-1] &= loss_mask[:, 1:].bool()
        valid[:, -1] = False
        pos = torch.arange(s, device=input_ids.device)
        valid &= pos[None, :] < (lengths[:, None] - 1)
        return pick_anchors(valid, self.cfg.num_anchors, generator)

    def block_forward(self, input_ids, features, anchors, keep, block_size=None):
        """One training-layout forward over all blocks; `(hidden [N, n, B, H], positions [N, n, B])`.

        Queries: `n * B` block tokens per row. Keys: the `S` context positions then the blocks. Block
        `b` (anchor `p_b`) sees context `c < p_b` (strictly: the anchor's own feature does not exist at
        inference, B.5-2) and its own block in both directions (B.5-3); nothing else.
        """
        bs = block_size or self.cfg.block_size
        n_rows, s = input_ids.shape
        n = anchors.shape[1]
        dev = input_ids.device
        ctx = self.fuse(features)  # [N, S, H]
        ctx_pos = torch.arange(s, device=dev).expand(n_rows, s)
        cos_c, sin_c = rotary(ctx_pos, self.cfg.head_dim, self.cfg.rope_theta, ctx.dtype)
        ctx_kv = [layer.context_kv(ctx, cos_c, sin_c) for layer in self.layers]
        x = self.embed_block(input_ids.gather(1, anchors), bs).reshape(n_rows, n * bs, -1)  # [N, n*B, H]
        positions = anchors[..., None] + torch.arange(bs, device=dev)  # [N, n, B]
        see_ctx = torch.arange(s, device=dev)[None, None, :] < anchors[..., None]  # [N, n, S]
        see_ctx &= keep[..., None]
        blk = torch.arange(n, device=dev)
        same_block = (blk[:, None] == blk[None, :])  # [n, n]
        see_ctx = see_ctx[:, :, None, :].expand(n_rows, n, bs, s).reshape(n_rows, n * bs, s)
        see_blk = same_block[:, None, :, None].expand(n, bs, n, bs).reshape(n * bs, n * bs)
        mask = torch.cat([see_ctx, see_blk.expand(n_rows, -1, -1)], -1)[:, None]  # [N, 1, n*B, S + n*B]
        h = self.run_layers(x, ctx_kv, positions.reshape(n_rows, n * bs), mask)
        return h.view(n_rows, n, bs, -1), positions

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Decayed same-position cross-entropy over random anchor blocks (B.2.2, B.5-1).

        `batch`: `input_ids [N, S]`, `loss_mask [N, S]` (assistant tokens), `features [N, S, L*H_t]`
        (frozen target, layers `target_layer_ids`), optional `lengths [N]`. Block position `k` predicts
        `x[p + k]` with weight `exp(-(k-1)/gamma)` for `k >= 1`.
        """
        ids, lm = batch["input_ids"], batch["loss_mask"]
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        anchors = batch.get("anchors")
        keep = batch.get("anchor_keep")
        if anchors is None:
            anchors, keep = self.sample_anchors(ids, lm, lengths, generator)
        bs = self.cfg.block_size
        h, positions = self.block_forward(ids, batch["features"], anchors, keep)
        s = ids.shape[1]
        k = torch.arange(bs, device=ids.device)
        in_range = positions < lengths[:, None, None]
        labels = ids.gather(1, positions.clamp(max=s - 1).flatten(1)).view_as(positions)
        label_mask = lm.gather(1, positions.clamp(max=s - 1).flatten(1)).view_as(positions).bool()
        valid = keep[..., None] & in_range & (k >= 1) & label_mask  # [N, n, B]
        decay = torch.where(k >= 1, torch.exp(-(k - 1).float() / self.cfg.gamma), torch.zeros(()))
        w = decay.expand_as(valid)[valid]
        logits = self.logits(h[valid])  # only supervised rows: [M, V]
        target = labels[valid]
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        loss = (w * ce).sum() / w.sum().clamp_min(1e-9)
        with torch.no_grad():
            hit = torch.zeros_like(valid)
            hit[valid] = logits.argmax(-1) == target
            accepted = (hit | ~valid)[..., 1:].cumprod(-1) & valid[..., 1:]
            n_blocks = keep.sum().clamp_min(1)
            metrics = {"loss": float(loss), "acc": float(hit.sum() / valid.sum().clamp_min(1)),
                       "tau_estimate": float(accepted.sum() / n_blocks + 1), "blocks": int(keep.sum())}
        return loss, metrics


# -- feature capture ------------------------------------------------------------------------------------

def fused(got: dict, layer_ids: list[int]) -> torch.Tensor:
    """`C_raw [B, q, L*H_t]`: captured layers concatenated in `target_layer_ids` order (B.1.1)."""
    return torch.cat([got[i] for i in layer_ids], -1)


# -- decoding (B.3) ---------------------------------------------------------------------------------------

class DFlashDecoder(ChainSpeculativeDecoder):
    """The B.3 loop on the engine: one non-causal draft pass, one chain verification per step.

    The engine verifies `[bonus, d1..d_{B-1}]`, accepts with the one-hot rule (drafts are greedy at
    every temperature, B.5-10), commits per row and keeps `self.last` (the bonus, not yet in the target
    cache). This class only drafts and keeps the draft cache in sync. Per row `b`, with
    `start[b]` = target cache length = position of the bonus: the draft cache holds context K/V of
    positions `< draft_cache.lengths[b]`, and `pending` the target features of positions
    `draft_cache.lengths[b] .. start[b]-1` (committed, not yet projected). Every draft call first
    projects `pending`, so during drafting the cache holds exactly positions `0 .. start-1` (B.3).
    """

    def __init__(self, target, sampling, generator, drafter: DFlashDrafter, block_size: int):
        super().__init__(target, sampling, generator, depth=block_size - 1)
        self.drafter = drafter
        self.block = block_size

    def forward(self, ids, cache, **kwargs):
        """Target forward that also catches the features of `target_layer_ids` (B.1.1)."""
        layer_ids = self.drafter.cfg.target_layer_ids
        logits, got = self.target.forward_with_features(ids, cache, layer_ids, **kwargs)
        self.features = fused(got, layer_ids)  # [B, q, L*H_t]
        return logits

    def on_prefill(self, logits):
        """Project the prompt's context into a fresh draft cache: the draft prefill of B.4. The draft cache
        is static where the target's is (the compiled regime), so the block pass has fixed shapes."""
        lengths = list(self.cache.lengths)
        self.draft_cache = RowKVCache(len(lengths), self.drafter.cfg.num_layers, self.cache.capacity,
                                      self.target.device, static=self.cache.static)
        with torch.inference_mode():
            self._project(self.features, self.draft_cache.begin_write(self.features.shape[1]))
            self.draft_cache.commit_prefix(lengths, self.cache.device_lengths)
        self._no_pending()

    def on_commit(self, result):
        """Keep the verify-pass features of the committed block positions only (B.5-5). A static draft
        cache takes the whole verify width (fixed shapes): the columns past a row's count land beyond its
        length, where the mask hides them and the next write overwrites them."""
        self.pending = self.features if self.draft_cache.static else self.features[:, : max(result.counts)]
        self.pending_counts, self.pending_device_counts = result.counts, result.device_counts  # a stopped row: 0

    def _no_pending(self) -> None:
        b, _, f = self.features.shape
        self.pending, self.pending_counts = self.features.new_zeros(b, 0, f), [0] * b  # fresh: no prompt-width strides
        self.pending_device_counts = torch.zeros(self.features.shape[0], dtype=torch.long, device=self.target.device)

    def propose(self, active):
        if self.depth < 1:
            return Proposal.empty(len(active), self.target.device)
        if not bool(active.all()):  # rows that stopped since keep their draft cache (issue 19)
            self.pending_device_counts = torch.where(active, self.pending_device_counts, 0)
            self.pending_counts = self.pending_device_counts.tolist()
        drafts = self._draft()
        return Proposal(drafts, torch.full((len(active),), self.depth, device=drafts.device))

    def _project(self, pending: torch.Tensor, positions: torch.Tensor) -> list:
        """Write the context K/V of committed features `pending [B, P, L*H_t]` at `positions [B, P]` (pending
        slots of the draft cache, `begin_write` done); returns each layer's K/V view. Block K/V never enter
        the cache, which is the same as writing them and cropping after every draft call (B.5-4)."""
        ctx = self.drafter.fuse(pending)
        cos, sin = rotary(positions, self.drafter.cfg.head_dim, self.drafter.cfg.rope_theta, ctx.dtype)
        return [self.draft_cache.layers[i].update(*layer.context_kv(ctx, cos, sin))
                for i, layer in enumerate(self.drafter.layers)]

    def _block_pass(self, pending, positions, counts, last):
        """The draft step on tensors alone (captured whole in the compiled regime, `specbench.compiled`):
        project `pending` (row `b` valid for `j < counts[b]`), then one non-causal pass of the block
        `[last, MASK x (bs-1)]` at positions `start ..`, `start = lengths + counts`, over context `< start`.
        Returns greedy drafts `[B, bs-1]` and the block's states `[B, bs, H]`."""
        drafter, bs, dev = self.drafter, self.block, self.target.device
        views = self._project(pending, positions)
        start = self.draft_cache.device_lengths + counts  # [B]: the bonus position
        end = views[0][0].shape[2]
        see_ctx = torch.arange(end, device=dev)[None, :] < start[:, None]  # [B, end]
        mask = torch.cat([see_ctx[:, None, :].expand(-1, bs, -1),
                          torch.ones(len(start), bs, bs, dtype=torch.bool, device=dev)], -1)[:, None]  # [B, 1, bs, end+bs]
        block_positions = start[:, None] + torch.arange(bs, device=dev)  # [B, bs]
        h = drafter.run_layers(drafter.embed_block(last, bs), views, block_positions, mask)
        return drafter.logits(h[:, 1:]).argmax(-1), h

    @torch.inference_mode()
    def _draft(self) -> torch.Tensor:
        """Greedy drafts `[B, block-1]` for positions `start+1 ..` from one non-causal pass (B.3); the
        pending features enter the draft cache first, so it holds exactly positions `0 .. start-1`."""
        cache = self.draft_cache
        positions = cache.begin_write(self.pending.shape[1])  # [B, P]
        drafts, self.last_draft_hidden = compiled.run(self.target, self._block_pass, self.pending, positions,
                                                      self.pending_device_counts, self.last)
        cache.commit_prefix(self.pending_counts, self.pending_device_counts)
        self._no_pending()
        return drafts


# -- the method ---------------------------------------------------------------------------------------------

class DFlashMethod(Method):
    name = "dflash"
    description = "DFlash: block-diffusion drafter on fused target features (KV injection), one pass per block"
    needs_drafter = True
    drafter_class = DFlashDrafter
    default_depth = None  # the drafter's trained block size
    DRAFTER_OPTIONS = ("num_layers", "block_size", "target_layer_ids", "mask_token", "mask_token_id", "gamma",
                       "num_anchors")
    COMPILED_PASSES = {"captured": ["target verify", "block pass (new context K/V into a static draft cache, the draft "
                                                      "layers, LM head, argmax)"],
                       "eager": ["prefill and its context projection"]}

    def __init__(self, target, depth=None, drafter=None, **options):
        """`options` are drafter config fields (they key `--drafter auto`); a loaded drafter must match."""
        self.split_options(options)
        super().__init__(target, depth=depth, **options)
        self.attach_drafter(drafter)
        if self.depth is None:
            self.depth = self.drafter.cfg.block_size

    def make_decoder(self, sampling, generator):
        return DFlashDecoder(self.target, sampling, generator, self.drafter, self.depth)

    def describe(self) -> dict:
        """Cost and configuration; `deviations` from Part B (`faithful` iff none), `notes` on
        implementation choices that compute the same thing."""
        cfg = self.drafter.cfg
        deviations = []
        if (cfg.num_layers, cfg.block_size) != (PAPER_DEFAULTS["num_layers"], PAPER_DEFAULTS["block_size"]):
            deviations.append(f"drafter size {cfg.num_layers} layers, block {cfg.block_size}, gamma {cfg.gamma:g}, "
                              f"{cfg.num_anchors} anchors (paper, B.2.3: 5 layers, block 16, gamma 7, 512 anchors)")
        if self.depth != cfg.block_size:
            deviations.append(f"decoding depth {self.depth} differs from the trained block size {cfg.block_size}")
        if cfg.mask_token_id is None:
            deviations.append("MASK is a learned drafter row: the target has no unused token (B.1.3 assumes one)")
        return {
            "name": self.name, "depth": self.depth, "options": self.options, "drafter": self.drafter_path,
            "drafter_parameters": sum(p.numel() for p in self.drafter.parameters()),
            "tokens_per_target_forward": self.depth,
            "draft_tokens_per_step": self.depth - 1,
            "draft_layers": cfg.num_layers, "block_size_trained": cfg.block_size, "gamma": cfg.gamma,
            "target_layer_ids": cfg.target_layer_ids,
            "mask_token": {"id": cfg.mask_token_id, "token": cfg.mask_token, "source": cfg.mask_source},
            "training": {k: self.drafter.training_info.get(k) for k in ("budget", "final_eval")
                         if self.drafter.training_info.get(k) is not None},
            "paper_defaults": PAPER_DEFAULTS,
            "faithful": not deviations,
            "deviations": deviations,
            "notes": ["per-row draft cache for batch > 1 (the reference is batch 1, B.5-15)",
                      "block K/V never enter the draft cache: same as writing and cropping after every draft call (B.5-4)",
                      "prompt context projected in prefill: the draft prefill that B.4 excludes from decode time",
                      f"{len(cfg.target_layer_ids)} fused target layers for {cfg.num_layers} draft layers "
                      "(counts decoupled as in dflash@a3516f8, B.1.1)",
                      "drafts are greedy at every temperature; one-hot acceptance in the shared engine (B.5-10)"],
        }
