"""`bita`: BiTA, bi-directional tuning for lossless acceleration (a frozen target that drafts for itself).

Spec: `../shared/methods/bita_mtp_flexdraft.md` Part A, with §1.2 (BiTA's *next-position* convention: mask
slot `j` of a group whose last visible token sits at `q` is at position `q+1+j` and predicts the token at
`q+2+j`) and §1.3 (4-D masks, explicit positions). Why it exists in specbench: it is the lightest trained
baseline (≈0.5 M parameters on smollm2-135m), so comparing FlexDraft against it shows what attention
tuning and calibration add on top of "soft tokens on a frozen model" (issue 11).

* **Parameters** (A.3). `P` learned prompt key/value pairs per layer — a deep prefix (P-Tuning v2) whose
  keys carry no RoPE and no Qwen3 `k_norm` (A.3.1, A.8-3) — and `M` distinct learned mask embeddings
  (A.3.2). The target's weights are untouched and outside the drafter's state dict.
* **Visibility** (A.4). Clean / candidate rows run the target's own attention modules over the cache and
  never see prompts or masks, so the AR path *is* the target (greedy-lossless; the clean logits are
  bit-identical to `Target.forward`, tested). Mask rows see the prompts, the committed prefix, the path
  from the root to their node, and their own group **causally** (A.2: no bidirectional attention).
* **Training** (A.5). Grouped examples (A.5.2): a window of up to `max_groups` consecutive admissible
  starts per sequence, one group of `M` masks per start, each seeing exactly its own prefix; plain mean
  CE over all mask rows (A.5.3); prefix dropout 0.1; AdamW lr 3e-2 with a cosine schedule and no warm-up
  (A.5.4). The clean K/V need no gradient (prompts never reach clean rows), so one no-grad target pass
  makes them and only the mask rows run with autograd — the same numbers as A.5.5's joint forward.
* **Inference** (A.6.5, the KV-cached variant, output-equivalent to A.6.1/A.6.2). One target pass per
  step feeds `[b, nodes]` as clean rows (verified by the engine's `verify_tree`, acceptance and cache
  gather) plus one mask group per node *and* the root (the last emitted token `b`), so whatever gets
  accepted, the next drafts are already computed; the group of the deepest accepted node is selected
  afterwards. Layouts (`-o tree=`): `tree` = A.6.2's "upper-triangle" caterpillar (top-`K_c` at depth 1,
  top-`(K_c-m)` children of the spine node at depth `m+1`; the default of every released eval script),
  `chain` = A.6.1 (one candidate per depth). `--depth` is `M` (at most the trained `M`; groups are causal,
  so using the first `depth` slots of a wider group is exact). T > 0: drafts are deterministic (top-k),
  verified with the engine's one-hot rule — lossless, unlike the release's own sampling rule (A.6.4).

Reconstructed, not in the release (also listed by `BiTAMethod.describe()["notes"]`):
* the KV-cached step (A.6.5 [recon]) and batch > 1 with per-row caches (the release is batch 1);
* the prompt's root group runs inside the prefill pass (the release instead spends a first step on dummy
  candidates, A.6.3), so the first decode step already verifies drafts;
* mask embeddings start at the scale of the target's token embeddings (the release's init is not in the
  spec); the prefix starts at N(0, 1) like P-Tuning v2's `nn.Embedding` table;
* training data and budget are the harness's standard recipe (same for every method), not BiTA's
  assembled prompt set and one 4x-resampled epoch at batch 128.

Layout default by device (`CPU_LAYOUT`; issue 23). On CUDA the release's tree. On a CPU the pass cost
grows with its rows, and the tree (52 rows at M = 3) measured τ 2.43 / 0.43x on smollm2-135m (README
"Measured on smollm2-135m", 2026-11-26: H200-trained drafter, GSM8K, T = 0, batch 1, 10 prompts x 128
tokens on 2 CPU cores), the slowest trained method there. The chain (16 rows at M = 3) is the CPU default,
**measured** 2026-12-03 with the standard CPU drafter (25 CPU-minutes), GSM8K, T = 0, batch 1, 10 prompts
x 128 tokens, one thread: chain τ 1.23, 0.36x [0.35, 0.37], step 164 ms; tree τ 1.65, 0.28x [0.26, 0.30],
step 295 ms (AR step 47-48 ms). The tree accepts more but its 52-row pass costs 1.8x the chain's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from specbench import compiled
from specbench.engine import TreeSpeculativeDecoder
from specbench.engine.tree import TreeBatch
from specbench.errors import SpecbenchError
from specbench.kv_cache import RowKVCache, slot_visibility
from specbench.layers import attention_shape, clean_cache, joint_layer, mask_row_attention
from specbench.methods.base import Method, integer, one_of
from specbench.training.drafter import Drafter

#: the release's operating point (A.3, A.5.4, A.6.2)
PAPER_DEFAULTS = {"num_prompts": 16, "num_masks": "3 (7B/13B) or 4 (>=33B)", "tree": "tree", "top_k": 5,
                  "max_groups": 64, "prefix_dropout": 0.1, "lr": 3e-2, "schedule": "cosine, no warm-up",
                  "batch": 128}
LAYOUTS = ("tree", "chain")
#: CPU layout default: fewer rows per pass (module docstring: chain 0.36x vs tree 0.28x, measured)
CPU_LAYOUT = "chain"


def device_layout(device_type: str) -> str:
    """The layout when `-o tree=` is not given: the release's tree on CUDA, `CPU_LAYOUT` on a CPU."""
    return PAPER_DEFAULTS["tree"] if device_type == "cuda" else CPU_LAYOUT
#: the config fields a user chooses (the rest is the target's shape)
DRAFTER_FIELDS = ("num_masks", "num_prompts", "prefix_heads", "prefix_dropout", "max_groups")


@dataclass
class BiTAConfig:
    """Shapes of the target's attention plus BiTA's own sizes (saved in the drafter's config.json)."""

    num_target_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_masks: int = 3  # M
    num_prompts: int = 16  # P
    prefix_heads: str = "query"  # "query": one K/V per query head (faithful, A.3.1 a); "kv": per KV head (b)
    prefix_dropout: float = 0.1
    max_groups: int = 64  # G_max: mask groups per training sequence

    def __post_init__(self):
        if self.num_masks < 1 or self.num_prompts < 1 or self.max_groups < 1:
            raise SpecbenchError("bita needs num_masks, num_prompts and max_groups >= 1")
        if self.prefix_heads not in ("query", "kv"):
            raise SpecbenchError(f"bita prefix_heads must be 'query' or 'kv', got {self.prefix_heads!r}")

    @property
    def prefix_head_count(self) -> int:
        return self.num_heads if self.prefix_heads == "query" else self.num_kv_heads


# -- layouts (A.4, A.5.2, A.6) ------------------------------------------------------------------------------

def group_layout(lengths: torch.Tensor, positions: torch.Tensor, anchors: torch.Tensor,
                 pending_see: torch.Tensor, masks: int, end: int | None = None):
    """Mask groups attached to pending rows: positions and visibility (A.4).

    `lengths [B]`: committed cache slots per row; `positions [B, q]`: position ids of the `q` pending
    (clean) rows, which occupy slots `lengths[b] .. lengths[b] + q - 1`; `anchors [B, G]`: the pending row
    each group hangs off (its last visible clean token); `pending_see [B or 1, q, q]` bool: which pending
    rows each pending row sees (the tree's ancestor mask, or causal). Slot `j` of a group sits at the
    anchor's position + 1 + j (§1.2) and sees the committed slots, what its anchor sees, and the slots
    `<= j` of its own group. Prompt (prefix) keys are not included here: every mask row sees all of them.

    Returns `(mask positions [B, G*M], visibility [B, 1, G*M, end + G*M])` with `end = max(lengths) + q`
    (pass `end` when it is known on the host).
    """
    b, g = anchors.shape
    q = positions.shape[1]
    dev = positions.device
    j = torch.arange(masks, device=dev)
    mask_pos = (positions.gather(1, anchors)[..., None] + 1 + j).reshape(b, g * masks)
    anchor_see = pending_see.expand(b, q, q).gather(1, anchors[..., None].expand(b, g, q))  # [B, G, q]
    row_see = anchor_see.repeat_interleave(masks, 1)  # [B, G*M, q]
    end = int(lengths.max()) + q if end is None else end
    ctx = slot_visibility(lengths, end, row_see)  # [B, G*M, end]
    group, slot_j = torch.arange(g, device=dev).repeat_interleave(masks), j.repeat(g)
    own = (group[:, None] == group[None, :]) & (slot_j[None, :] <= slot_j[:, None])  # causal inside a group
    return mask_pos, torch.cat([ctx, own.expand(b, -1, -1)], -1)[:, None]


def tree_parents(depth: int, top_k: int, vocab: int) -> tuple[list[int], list[int]]:
    """A.6.2's upper-triangle tree as a flat parent list (root first) and the nodes per level.

    Level `m` (mask slot `m`) holds the top-`(top_k - m)` tokens (at least 1, at most the vocabulary), all
    children of the level-`m-1` spine node (its top-1, tried first); `top_k = 1` is A.6.1's chain.
    """
    sizes = [min(vocab, max(1, top_k - m)) for m in range(depth)]
    parents, spine = [-1], 0
    for size in sizes:
        first = len(parents)
        parents += [spine] * size
        spine = first
    return parents, sizes


# -- the drafter ----------------------------------------------------------------------------------------

class BiTADrafter(Drafter):
    """Deep prompt K/V `[P, L, 2, heads, d]` + mask embeddings `[M, H]` on a frozen target (A.3).

    Runs the target's own layers (norms, projections, RoPE tables, FFN, LM head) held by reference; the
    only extra computation is the mask rows' attention over `[prompts, cache, own group]`.
    """

    method = "bita"
    config_class = BiTAConfig
    #: A.5.4: AdamW (HF defaults: betas 0.9/0.999, no weight decay), lr 3e-2, cosine to 0, no warm-up,
    #: clip 1.0. The batch (8 sequences, not 128) and the step count are the shared recipe's.
    training_defaults = {"lr": 3e-2, "warmup_ratio": 0.0, "min_lr_ratio": 0.0, "betas": (0.9, 0.999),
                         "weight_decay": 0.0}

    def __init__(self, config: BiTAConfig):
        super().__init__(config)
        c = config
        self.prefix = nn.Parameter(torch.randn(c.num_prompts, c.num_target_layers, 2, c.prefix_head_count,
                                               c.head_dim))
        self.mask_embedding = nn.Parameter(torch.randn(c.num_masks, c.hidden_size) * 0.02)

    @classmethod
    def default_config(cls, target, **options) -> BiTAConfig:
        c = target.config
        known = set(DRAFTER_FIELDS)
        if set(options) - known:
            raise SpecbenchError(f"bita drafter options are {', '.join(sorted(known))}; got "
                                 f"{sorted(set(options) - known)}")
        return BiTAConfig(num_target_layers=c.num_hidden_layers, hidden_size=c.hidden_size, **attention_shape(c),
                          **options)

    def attach(self, target) -> "BiTADrafter":
        super().attach(target)
        decoder = target.model.get_decoder()
        # a plain namespace, not submodules: the target's weights stay out of parameters() and state_dict()
        self.t = SimpleNamespace(layers=decoder.layers, norm=decoder.norm, rotary=decoder.rotary_emb,
                                 embed=target.model.get_input_embeddings(), head=target.head)
        if len(self.t.layers) != self.cfg.num_target_layers:
            raise SpecbenchError(f"bita drafter built for {self.cfg.num_target_layers} layers, target has "
                                 f"{len(self.t.layers)}")
        for name in ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn"):
            if not hasattr(self.t.layers[0], name):
                raise SpecbenchError(f"bita supports pre-norm Llama/Qwen-style decoders; the target's layers "
                                     f"lack {name}")
        target.model.requires_grad_(False)  # the AR path stays frozen (A.3.3)
        return self

    def init_from_target(self) -> None:
        with torch.no_grad():
            self.mask_embedding.normal_(0.0, float(self.t.embed.weight.float().std()))

    def parameter_counts(self) -> dict:
        return {"prefix": self.prefix.numel(), "mask_embedding": self.mask_embedding.numel(),
                "total": self.prefix.numel() + self.mask_embedding.numel()}

    # -- the layer math ---------------------------------------------------------------------------------
    def _mask_attention(self, l: int, h, cos_sin, ctx_k, ctx_v, prefix, see):
        """Mask rows `h [B, R, H]` (input-normed) of layer `l` with the target's projections, attending
        over raw prompt K/V `prefix [P, 2, heads, d]`, context K/V `[B, kv, T, d]` and their own rows."""
        b = h.shape[0]
        pk = prefix[:, 0].transpose(0, 1)[None].expand(b, -1, -1, -1)  # [B, heads, P, d]
        pv = prefix[:, 1].transpose(0, 1)[None].expand(b, -1, -1, -1)
        return mask_row_attention(self.t.layers[l].self_attn, h, *cos_sin, ctx_k, ctx_v, see, self.cfg.head_dim,
                                  shared_kv=(pk, pv), skinny_rows=self.target.skinny_rows)

    def _layers(self, cache, end: int, x=None, pe_c=None, mask_c=None, xm=None, pe_m=None, see=None, prefix=None):
        """Every target layer (`joint_layer`) on clean rows `x [B, q, H]` and/or mask rows `xm [B, R, H]`;
        mask rows use the target's projections plus the layer's prompt K/V (A.3)."""
        for l, layer in enumerate(self.t.layers):
            kv = cache.layers[l]
            x, xm = joint_layer(layer, x, xm, pe_c, mask_c, cache,
                                lambda hm: self._mask_attention(l, hm, pe_m, kv.keys[:, :, :end], kv.values[:, :, :end],
                                                                prefix[:, l], see),
                                skinny_rows=self.target.skinny_rows)
        return x, xm

    def _prompts(self) -> torch.Tensor:
        """Prompt K/V with A.3.1's dropout in training."""
        return F.dropout(self.prefix, self.cfg.prefix_dropout, self.training)

    def mask_rows(self, batch: int, groups: int, masks: int) -> torch.Tensor:
        """`groups` groups of the first `masks` mask embeddings: `[batch, groups * masks, H]`."""
        e = self.mask_embedding[:masks].to(self.target.dtype)
        return e.repeat(groups, 1)[None].expand(batch, -1, -1)

    @torch.inference_mode()
    def joint_forward(self, ids: torch.Tensor, cache, anchors: torch.Tensor, masks: int,
                      intra: torch.Tensor | None = None, depths: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None):
        """One BiTA pass (A.6.5): clean `ids [B, q]` as pending tokens of `cache` (causal, or the tree's
        `intra`/`depths`) + one group of `masks` mask rows per anchor `[B, G]`. `positions` given: the
        caller did `cache.begin_write` (host bookkeeping kept out of a captured pass).

        Returns `(clean logits [B, q, V], mask hidden states [B, G, masks, H] before the final norm)`.
        Only clean K/V enter the cache.
        """
        b, q = ids.shape
        if positions is None:
            positions = cache.begin_write(q)
        if depths is not None:
            positions = positions[:, :1] + depths.to(positions.device).expand(positions.shape)
        end = cache.view_end
        mask_c = cache.attention_mask(intra, self.target.dtype)
        see_pending = intra if intra is not None else torch.ones(q, q, dtype=torch.bool, device=ids.device).tril()
        mask_pos, see = group_layout(cache.device_lengths, positions, anchors, see_pending.reshape(-1, q, q), masks,
                                     end)
        x = self.t.embed(ids)
        xm = self.mask_rows(b, anchors.shape[1], masks)
        x, xm = self._layers(cache, end, x, self.t.rotary(x, positions), mask_c, xm, self.t.rotary(xm, mask_pos), see,
                             self._prompts())
        return self.t.head(self.t.norm(x)), xm.reshape(b, anchors.shape[1], masks, -1)

    def mask_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.t.head(self.t.norm(h))

    # -- training (A.5) -----------------------------------------------------------------------------------
    def sample_groups(self, loss_mask: torch.Tensor, generator: torch.Generator | None = None):
        """A.5.2: admissible anchors `a` (last visible clean token) need the AR token `a+1` and the labels
        `a+2 .. a+M+1` to be response tokens; a random window of up to `max_groups` consecutive ones per
        row. Returns `(anchors [N, G], keep [N, G])`, padded with `keep = False`."""
        m, g_max = self.cfg.num_masks, self.cfg.max_groups
        n, s = loss_mask.shape
        ok = loss_mask.bool()[:, 1:].unfold(1, m + 1, 1).all(-1) if s > m + 1 else loss_mask.new_zeros(n, 0).bool()
        picks = []
        for r in range(n):
            idx = ok[r].nonzero().flatten()
            if idx.numel() > g_max:
                s0 = int(torch.randint(0, idx.numel() - g_max + 1, (1,), generator=generator))
                idx = idx[s0:s0 + g_max]
            picks.append(idx)
        width = max(1, max(p.numel() for p in picks))
        anchors = torch.zeros(n, width, dtype=torch.long, device=loss_mask.device)
        keep = torch.zeros(n, width, dtype=torch.bool, device=loss_mask.device)
        for r, p in enumerate(picks):
            anchors[r, : p.numel()], keep[r, : p.numel()] = p, True
        return anchors, keep

    def clean_cache(self, ids: torch.Tensor) -> RowKVCache:
        """Every layer's clean K/V of `ids [N, S]` without gradients: prompts never reach clean rows, so
        these are constants of the training forward (A.5.5 computes the same in one pass)."""
        return clean_cache(self.t.layers, self.t.embed, self.t.rotary, ids)

    def group_hidden(self, ids: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Mask hidden states `[N, G, M, H]` of grouped examples (A.5.2 layout, A.5.5 forward)."""
        n, s = ids.shape
        m = self.cfg.num_masks
        cache = self.clean_cache(ids)
        positions = torch.arange(s, device=ids.device).expand(n, s)
        causal = torch.ones(1, s, s, dtype=torch.bool, device=ids.device).tril()
        mask_pos, see = group_layout(torch.zeros(n, dtype=torch.long, device=ids.device), positions, anchors,
                                     causal, m)
        xm = self.mask_rows(n, anchors.shape[1], m)
        _, xm = self._layers(cache, s, xm=xm, pe_m=self.t.rotary(xm, mask_pos), see=see, prefix=self._prompts())
        return xm.reshape(n, anchors.shape[1], m, -1)

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """Mean CE over all mask rows (A.5.3): slot `j` of the group anchored at `a` predicts `x_{a+2+j}`.

        `batch`: `input_ids`, `loss_mask` `[N, S]`; optional `anchors` / `anchor_keep` `[N, G]`.
        Metrics: `acc` (top-1 over mask rows), `acc_slot{j}`, `tau_estimate` (1 + mean accepted chain
        prefix per group: greedy chain-mode acceptance on the target's own greedy data).
        """
        ids, lm = batch["input_ids"], batch["loss_mask"]
        anchors, keep = batch.get("anchors"), batch.get("anchor_keep")
        if anchors is None:
            anchors, keep = self.sample_groups(lm, generator)
        m = self.cfg.num_masks
        s = ids.shape[1]
        h = self.group_hidden(ids, anchors)  # [N, G, M, H]
        at = anchors[..., None] + 2 + torch.arange(m, device=ids.device)  # [N, G, M]
        labels = ids.gather(1, at.clamp(max=s - 1).flatten(1)).view_as(at)
        valid = keep[..., None].expand_as(at)
        logits = self.mask_logits(h[valid]).float()
        target = labels[valid]
        loss = F.cross_entropy(logits, target) if target.numel() else h.sum() * 0.0
        with torch.no_grad():
            hit = torch.zeros_like(valid)
            hit[valid] = logits.argmax(-1) == target
            n_groups = keep.sum().clamp_min(1)
            metrics = {"acc": float(hit.sum() / valid.sum().clamp_min(1)), "groups": int(keep.sum()),
                       "tau_estimate": float(hit.long().cumprod(-1).sum() / n_groups + 1)}
            metrics.update({f"acc_slot{j}": float(hit[..., j].sum() / n_groups) for j in range(m)})
        return loss, metrics


# -- decoding (A.6) ----------------------------------------------------------------------------------------

class BiTADecoder(TreeSpeculativeDecoder):
    """Tree (or chain) steps through the engine; the next tree comes from the mask group of the deepest
    accepted node of this step's pass (A.6.3, A.7). The root is the last emitted token `b`."""

    def __init__(self, target, sampling, generator, drafter: BiTADrafter, depth: int, top_k: int):
        self.parents, self.level_sizes = tree_parents(depth, top_k, target.vocab_size)
        super().__init__(target, sampling, generator, depth, max_nodes=len(self.parents))
        self.drafter = drafter
        self._anchors = self._groups = self._selected = None
        self._parents = torch.tensor(self.parents, device=target.device)  # [nodes], the same tree every step
        self._shape: TreeBatch | None = None  # masks/depths/children of that tree for a fully active batch

    def prefill(self, prompts, capacity):
        """The engine's (AR-identical) prefill with the root group hung off each prompt's last token."""
        self._anchors = torch.tensor([[len(p) - 1] for p in prompts], device=self.target.device)
        return super().prefill(prompts, capacity)

    def forward(self, ids, cache, intra=None, depths=None, **kwargs):
        """The target forward the engine times as verify: clean rows + one group per node (or, in the
        prefill, per prompt)."""
        anchors = self._anchors if intra is None else torch.arange(ids.shape[1], device=ids.device).expand(ids.shape)
        if kwargs.get("logits_at") is not None:  # the prefill: a new width every batch, eager as the target's
            logits, self._groups = self.drafter.joint_forward(ids, cache, anchors, self.depth, intra, depths)
            return logits
        positions = cache.begin_write(ids.shape[1])
        logits, self._groups = compiled.run(self.target, self.drafter.joint_forward, ids, cache, anchors, self.depth,
                                            intra, depths, positions=positions)
        return logits

    def on_prefill(self, logits):
        self._selected = self._groups[:, 0].contiguous()  # not the prompt width's strides: one captured head pass
        self._groups = None

    def on_commit(self, result):
        """Keep the mask group of each row's deepest accepted node (root group if none was accepted)."""
        rows = torch.arange(result.path.shape[0], device=result.path.device)
        self._selected = self._groups[rows, result.path[rows, result.n_accepted]]  # [B, M, H]
        self._groups = None

    @torch.inference_mode()
    def _next_tree(self) -> torch.Tensor:
        """Candidates from the selected group: the top-`size` tokens of slot `m` at level `m` (A.6.3)."""
        z = compiled.run(self.target, self.drafter.mask_logits, self._selected)  # [B, M, V]
        tokens = [self.last[:, None]] + [z[:, m].topk(k, -1).indices for m, k in enumerate(self.level_sizes)]
        return torch.cat(tokens, 1)

    @torch.inference_mode()
    def step(self, timer, active):
        return super().step(timer, active)

    def propose_tree(self, active: torch.Tensor) -> TreeBatch:
        """The LM head over the selected group and the top-k run here, so they are timed as draft. The
        tree's shape is the same every step (stopped rows are cut to their root by the engine)."""
        tree = self._next_tree()
        b, n = tree.shape
        if self._shape is None or self._shape.tokens.shape[0] != b:
            self._shape = TreeBatch.from_parents(tree, self._parents.expand(b, n))
        return replace(self._shape, tokens=tree)


# -- the method ------------------------------------------------------------------------------------------

class BiTAMethod(Method):
    """Decode options (`-o KEY=VALUE`): `tree` tree|chain (A.6.2 / A.6.1), `top_k` (K_c, tree only).
    Drafter options (`num_masks`, `num_prompts`, `prefix_heads`, `prefix_dropout`, `max_groups`) pick the
    drafter for `--drafter auto` and must match a given one. `--depth` = M (default: the trained M)."""

    name = "bita"
    description = ("BiTA: frozen target + learned deep prompt K/V and mask tokens; verify a candidate tree and "
                   "draft the next one in the same forward pass")
    needs_drafter = True
    default_depth = None
    drafter_class = BiTADrafter
    DECODE_OPTIONS = {"tree": None, "top_k": 5}  # tree None: the release's tree on CUDA, CPU_LAYOUT on a CPU
    OPTION_KINDS = {"tree": one_of(*LAYOUTS), "top_k": integer(1)}
    DRAFTER_OPTIONS = DRAFTER_FIELDS
    COMPILED_PASSES = {"captured": ["joint pass (tree verify + mask groups, the target's layers walked by the method)",
                                     "mask-group LM head"],
                       "eager": ["prefill (with the root group)", "top-k candidate assembly"]}

    def __init__(self, target, depth: int | None = None, drafter=None, **options):
        opts = self.split_options(options)
        self.cpu_default = opts["tree"] is None and target.device.type != "cuda"  # describe
        opts["tree"] = opts["tree"] or device_layout(target.device.type)
        super().__init__(target, depth=depth, **options)
        self.opts = opts
        self.attach_drafter(drafter)
        cfg = self.drafter.cfg
        self.depth = int(self.depth) if self.depth is not None else cfg.num_masks
        if not 1 <= self.depth <= cfg.num_masks:
            raise SpecbenchError(f"bita --depth is the number of mask tokens M: 1..{cfg.num_masks} for this "
                                 f"drafter, got {self.depth}")

    @property
    def top_k(self) -> int:
        return self.opts["top_k"] if self.opts["tree"] == "tree" else 1

    def make_decoder(self, sampling, generator):
        return BiTADecoder(self.target, sampling, generator, self.drafter, self.depth, self.top_k)

    def describe(self) -> dict:
        cfg, m = self.drafter.cfg, self.depth
        parents, sizes = tree_parents(m, self.top_k, self.target.vocab_size)
        nodes = len(parents) - 1
        counts = self.drafter.parameter_counts()
        notes = [
            "KV-cached step (A.6.5 [recon], output-equivalent): [b, nodes] verified by the engine + one causal "
            "mask group per node and the root; only the accepted path's K/V enter the cache",
            "batch > 1 with per-row caches and per-row group selection (the release is batch 1)",
            "the prompt's root group runs in the prefill pass (release: a first step with dummy candidates)",
            "drafting happens inside the verify pass (timed as verify); the LM head over the selected group "
            "and the top-k are timed as draft",
            "T > 0: deterministic top-k candidates verified with the one-hot rule (release: its own sampling "
            "rule, which is not distribution-preserving, A.6.4)",
            "init: prefix N(0,1) (P-Tuning v2 nn.Embedding), mask embeddings at the target's embedding scale "
            "[recon]",
            "training: the harness's standard data and budget (same for every method), A.5.4 optimiser",
        ]
        if cfg.prefix_heads == "kv":
            notes.append("prompt K/V per KV head (A.3.1 option b), fewer parameters than the release")
        if m != cfg.num_masks:
            notes.append(f"decoding with the first {m} of {cfg.num_masks} trained mask slots")
        if self.cpu_default:
            notes.append(f"CPU default layout {CPU_LAYOUT} (fewer rows per pass; GPU: the release's tree)")
        return {
            "name": self.name, "depth": m, "options": dict(self.opts), "drafter": self.drafter_path,
            "drafter_parameters": counts["total"],
            # every row runs the full depth: b + candidate nodes + (nodes + 1) groups of M masks
            "tokens_per_target_forward": 1 + nodes + (nodes + 1) * m,
            "mask_rows_per_pass": (nodes + 1) * m,
            "tree": {"layout": self.opts["tree"], "top_k": self.top_k, "nodes_per_level": sizes, "nodes": nodes},
            "cost_detail": {"parameter_split": counts,
                            "fraction_of_target": counts["total"] / sum(p.numel() for p in self.target.model.parameters())},
            "drafter_config": {k: getattr(cfg, k) for k in DRAFTER_FIELDS},
            "paper_defaults": PAPER_DEFAULTS,
            "faithful": False,  # reconstructed init, step layout and T > 0 rule, harness training (notes)
            "notes": notes,
        }
