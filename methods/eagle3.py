"""`eagle3`: a one-layer feature-level drafter over fused target features, with a dynamic draft tree.

Spec: `../shared/methods/eagle3_dflash.md` Part A. The drafter reads the inputs of target layers
2, N//2 and N-3 (A.1.1), projects them with `fc`, and runs one decoder layer of the target's family
whose attention input is `[norm(embedding), norm(feature)]` (A.1.3). Its own head predicts over a
reduced draft vocabulary chosen from training-token frequencies (A.1.4). Training unrolls the drafter
on its own features for `ttt_steps` steps ("training-time test", A.2.3); inference grows a top-k tree
ranked by cumulative raw draft log-probabilities (A.3.2), which the shared engine verifies with
multi-candidate tree acceptance and the path-order cache gather (A.3.3-A.3.5, issue 4).

Faithful to the spec (pitfall numbers A.5-n): feature layers and their pre-norm residual stream
(1, 2), embedding-first concat with the un-normalised feature as residual (3), fed-back features
before the final norm (4), `fc` only on target features (5), draft RoPE base 10000 for Llama (the
target's for Qwen3, as the published Qwen3 drafts) (6), `head_dim` from config (7), d2t offsets and
a teacher re-normalised over the draft vocabulary with out-of-vocabulary argmax rows masked (8), the
soft-label loss averaged over all B·T rows and decayed by 0.8^j over 7 steps (9), the TTT attention
layout with RoPE position t + j (10), the unshifted loss mask of the reference (11), `total_tokens`
counting the root and `depth` = drafted path length − 1 (12), raw draft scores (13), one-hot sibling
acceptance (14, engine), path-order target cache gather (15, engine), scratch tree K/V dropped every
cycle (16) and τ counting the bonus (17, the shared loop).

The draft layer is plain Llama attention for every target family, Qwen3 included: the reference code
and the published Qwen3 heads (AngelSlim, SpecForge, speculators' Llama-layer exports) have no q/k
norms. `Eagle3Config.qk_norm` stays (default False) so that older specbench drafters trained with
Qwen3 q/k norms still load, and so that checkpoints shipping them (a speculators head whose layer
config is Qwen3) are reproduced exactly; `norm_before_residual` is the speculators variant whose
residual is the normalised feature. Released checkpoints load through `specbench.published`.

Deviations, all reported by `describe()`:
* batch > 1: per-row draft and target caches (the reference is batch 1);
* the prompt's draft pass runs in `prefill` (the reference runs it inside its first draft call);
* `--depth` is the tree depth (max drafted tokens on a path), EAGLE's `depth` + 1, so depth sweeps
  compare with chain methods;
* CPU tree defaults, and the CPU training budget, data and optimiser of the shared trainer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specbench import compiled
from specbench.engine import TreeBatch, TreeSpeculativeDecoder
from specbench.errors import SpecbenchError
from specbench.kv_cache import RowKVCache
from specbench.layers import DecoderLayerShape, RMSNorm, apply_rotary, rope_theta, rotary
from specbench.methods.base import Method, integer, one_of
from specbench.training.drafter import Drafter
from specbench.training.store import NEW_FIELD

#: EAGLE-3's evaluation-script tree (A.4): top-k 10, depth 5 (6 drafted levels), 60 nodes incl. root
PAPER_TREE = {"top_k": 10, "tree_depth": 6, "total_tokens": 60}
#: the same tree 8 levels deep (EAGLE's `depth` 8): what EAGLE's maintainers advise for EAGLE-3 heads to
#: reach the reported speedups, the evaluation scripts' depth 5 being EAGLE-2's (SafeAILab/EAGLE#209)
DEEP_TREE = {"top_k": 10, "tree_depth": 9, "total_tokens": 60}
#: smollm2-135m on 2 CPU cores: verification cost grows with the node count much faster than on a
#: GPU (4 nodes 1.5x an AR step, 16 nodes 2.3x, 60 nodes 5.3x), so a chain wins. With a drafter at
#: held-out acc 0.52, gsm8k --limit 10, 1 thread: chain 3 (4 nodes) tau 2.06 / 1.13x, chain 4 2.15 /
#: 1.06x, tree 2/4/8 2.39 / 1.05x, tree 4/5/16 2.82 / 0.97x (`.notes/eagle3.md`, 2026-11-26)
CPU_TREE = {"top_k": 1, "tree_depth": 3, "total_tokens": 4}
PAPER_TRAINING = {"ttt_steps": 7, "decay": 0.8, "draft_vocab_size": 32000}
#: on CPU the draft head's weight read dominates a draft forward and a TTT training step: 4096 ids
#: cover 96.6 % of smollm2-135m's supervised training tokens (12288, the paper's V/4, cover 100 %)
#: and halve both costs (`.notes/eagle3.md`)
CPU_DRAFT_VOCAB = 4096


# -- configuration --------------------------------------------------------------------------------------

def feature_layer_ids(num_layers: int) -> list[int]:
    """Inputs of layers 2, N//2, N-3 (A.1.1), spelled as 0-based "output of layer" ids (A.5-1).

    `specbench.training.features` captures layer outputs, so input of layer i = output of layer
    i - 1; tiny test targets clamp to their layers.
    """
    n = num_layers
    return [min(max(i - 1, 0), n - 1) for i in (2, n // 2, n - 3)]


def default_draft_vocab_size(vocab_size: int, device_type: str = "cuda") -> int:
    """32000 for the published 128k/152k vocabularies (A.1.4), a quarter of smaller ones; at most
    `CPU_DRAFT_VOCAB` for drafters trained on CPU."""
    cap = PAPER_TRAINING["draft_vocab_size"] if device_type == "cuda" else CPU_DRAFT_VOCAB
    return max(1, min(cap, vocab_size // 4))


@dataclass
class Eagle3Config(DecoderLayerShape):
    """Everything that rebuilds a drafter; dimensions equal the target's (A.1.2)."""

    vocab_size: int
    draft_vocab_size: int
    feature_layers: list[int]
    qk_norm: bool = False  # q/k RMSNorms in the draft attention: older specbench Qwen3 drafters only
    ttt_steps: int = PAPER_TRAINING["ttt_steps"]
    decay: float = PAPER_TRAINING["decay"]
    vocab_coverage: float | None = None  # share of supervised training tokens inside the draft vocab
    #: start `lm_head` / `norm` from the target's LM head rows of the draft vocab and final norm
    #: instead of from scratch (A.1.2); off by default, an ablation for tiny training budgets
    head_from_target: bool = False
    #: the residual around attention is `hidden_norm(h)` instead of `h` (speculators' option)
    norm_before_residual: bool = dataclasses.field(default=False, metadata=NEW_FIELD)


# -- modules ----------------------------------------------------------------------------------------------

class _Attention(nn.Module):
    """Projections only: attention itself differs between TTT training and tree drafting."""

    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(2 * h, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(2 * h, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(2 * h, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)


class _MLP(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Eagle3Layer(nn.Module):
    """The single decoder layer (A.1.2-A.1.3); parameter names follow the reference checkpoints."""

    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.cfg = cfg
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = _Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = _MLP(cfg)

    def project(self, e: torch.Tensor, h: torch.Tensor, positions: torch.Tensor):
        """Queries, keys, values of `[norm(e), norm(h)]` — embedding first (A.5-3) — RoPE'd at `positions`.

        `e, h [B, T, H]`, `positions [B, T]` -> q `[B, n_h, T, d]`, k, v `[B, n_kv, T, d]`.
        """
        cfg, attn = self.cfg, self.self_attn
        b, t, _ = h.shape
        a = torch.cat([self.input_layernorm(e), self.hidden_norm(h)], -1)  # [B, T, 2H]
        q = attn.q_proj(a).view(b, t, cfg.num_heads, cfg.head_dim)
        k = attn.k_proj(a).view(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = attn.v_proj(a).view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = rotary(positions, cfg.head_dim, cfg.rope_theta, h.dtype)
        return apply_rotary(q.transpose(1, 2), cos, sin), apply_rotary(k.transpose(1, 2), cos, sin), v

    def finish(self, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual on the input feature `h [B, T, H]` (un-normalised, A.5-3, unless
        `norm_before_residual`); `attn_out [B, n_h, T, d]`."""
        b, _, t, _ = attn_out.shape
        residual = self.hidden_norm(h) if self.cfg.norm_before_residual else h
        h1 = residual + self.self_attn.o_proj(attn_out.transpose(1, 2).reshape(b, t, -1))
        return h1 + self.mlp(self.post_attention_layernorm(h1))


def build_draft_vocab(counts: torch.Tensor, draft_vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(d2t [V_d], t2d [V])` from target-token counts `[V]` (A.1.4, A.5-8).

    The V_d most frequent ids (ties and the zero-count top-up in ascending id order, as SpecForge),
    sorted ascending; `d2t[i]` is the offset of draft index i, so its target id is `i + d2t[i]`.
    """
    v = counts.numel()
    if draft_vocab_size >= v:
        return torch.zeros(v, dtype=torch.long), torch.ones(v, dtype=torch.bool)
    used = torch.sort(counts, descending=True, stable=True).indices[:draft_vocab_size].sort().values
    t2d = torch.zeros(v, dtype=torch.bool)
    t2d[used] = True
    return used - torch.arange(draft_vocab_size), t2d


def _shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x[:, n:]` zero-filled back to length S (the reference's left shift, A.2.2)."""
    if n == 0:
        return x
    return torch.cat([x[:, n:], x.new_zeros((x.shape[0], n) + x.shape[2:])], 1)


def ttt_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Step-j attention of training-time test (A.2.3 item 3, pitfall A.5-10).

    `q [B, h, T, d]`; `keys/values[i] [B, h, T, d]` produced at step i (heads already repeated).
    Row t sees step-0 rows 0..t (causal) and its own row at steps 1..j; one softmax over all.
    """
    t = q.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    s0 = (q @ keys[0].transpose(-1, -2)) * scale  # [B, h, T, T]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    s0 = s0.masked_fill(~causal, float("-inf"))
    diag = [((q * k).sum(-1) * scale)[..., None] for k in keys[1:]]  # each [B, h, T, 1]
    p = torch.softmax(torch.cat([s0, *diag], -1).float(), -1).to(q.dtype)  # [B, h, T, T + j]
    out = p[..., :t] @ values[0]
    for i, v in enumerate(values[1:]):
        out = out + p[..., t + i, None] * v
    return out


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inference attention with a bool or additive mask `[B, 1, q, kv]`; GQA by grouping queries.

    Written out rather than SDPA: with many rows and a handful of keys (the distribution test, large
    batches) SDPA's masked CPU path was several times slower. `q [B, h, q, d]`, `keys [B, h_kv, kv, d]`.
    """
    b, h, t, d = q.shape
    g = h // keys.shape[1]
    qg = q.reshape(b, keys.shape[1], g * t, d)  # query heads of a group share their kv head
    scores = (qg @ keys.transpose(-1, -2)).float().view(b, h, t, -1) / math.sqrt(d)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    p = torch.softmax(scores, -1).to(q.dtype).view(b, keys.shape[1], g * t, -1)
    return (p @ values).view(b, h, t, d)


class Eagle3Drafter(Drafter):
    """fc over fused features → one decoder layer → norm → own head over the draft vocab (A.1.2).

    The frozen token embedding is the target's, borrowed through `attach` (never a parameter, never
    saved; A.1.2). `d2t` / `t2d` are buffers, saved with the weights.
    """

    method = "eagle3"
    config_class = Eagle3Config
    needs_target_logits = True  # soft labels (A.2.3 item 5)
    training_defaults = {"grad_clip": 0.5}  # A.2.4

    def __init__(self, config: Eagle3Config):
        super().__init__(config)
        c = config
        self.fc = nn.Linear(len(c.feature_layers) * c.target_hidden_size, c.hidden_size, bias=False)
        self.midlayer = Eagle3Layer(c)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.draft_vocab_size, bias=False)
        d2t, t2d = build_draft_vocab(torch.zeros(c.vocab_size), c.draft_vocab_size)
        self.register_buffer("d2t", d2t)
        self.register_buffer("t2d", t2d)

    @classmethod
    def default_config(cls, target, **options) -> Eagle3Config:
        c = target.config
        qwen = str(getattr(c, "model_type", "")).startswith("qwen3")
        fields = dict(
            DecoderLayerShape.of_target(c), rope_theta=rope_theta(c) if qwen else 10000.0, vocab_size=target.vocab_size,
            draft_vocab_size=default_draft_vocab_size(target.vocab_size, target.device.type),
            feature_layers=feature_layer_ids(c.num_hidden_layers))
        unknown = set(options) - {f.name for f in dataclasses.fields(Eagle3Config)}
        if unknown:
            raise SpecbenchError(f"eagle3 drafter options: unknown {sorted(unknown)}")
        fields.update(options)
        fields["draft_vocab_size"] = min(int(fields["draft_vocab_size"]), fields["vocab_size"])
        return Eagle3Config(**fields)

    def feature_layers(self) -> list[int]:
        return list(self.config.feature_layers)

    def init_from_data(self, examples) -> None:
        """Draft vocabulary from assistant-token counts of the training sequences (A.1.4 steps 1-5);
        with `head_from_target`, the head and final norm are then copied from the target."""
        counts = torch.zeros(self.config.vocab_size, dtype=torch.long)
        for e in examples:
            ids = torch.tensor(e.input_ids)[torch.tensor(e.loss_mask, dtype=torch.bool)]
            counts += torch.bincount(ids, minlength=self.config.vocab_size)[: self.config.vocab_size]
        d2t, t2d = build_draft_vocab(counts, self.config.draft_vocab_size)
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)
        total = int(counts.sum())
        self.config.vocab_coverage = round(float(counts[t2d].sum()) / total, 6) if total else None
        if self.config.head_from_target:
            model = self.target.model
            with torch.no_grad():
                rows = model.get_output_embeddings().weight[self.draft_token_ids()]
                self.lm_head.weight.copy_(rows.to(self.lm_head.weight.dtype))
                self.norm.weight.copy_(model.model.norm.weight.to(self.norm.weight.dtype))

    # -- pieces ----------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.target.model.get_input_embeddings().weight.detach()
        return F.embedding(ids, weight).to(self.fc.weight.dtype)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Draft-vocab logits of fed-back features: the head sees `norm(h)` (A.5-4)."""
        return self.lm_head(self.norm(h))

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def draft_token_ids(self) -> torch.Tensor:
        """Target id of every draft index, ascending (= draft index order)."""
        return self.to_target(torch.arange(self.config.draft_vocab_size, device=self.d2t.device))

    # -- training (A.2) -------------------------------------------------------------------------------
    def unroll(self, input_ids: torch.Tensor, features: torch.Tensor):
        """Training-time test forward (A.2.3): yields `(j, h_j [B, S, H])` for j = 0..ttt_steps-1.

        Row t of step j holds the feature f_t (step 0, through `fc`) or the draft's own step j-1
        output (no detach), the true token x_{t+j+1} and RoPE position t+j; it attends to step-0 rows
        0..t and to its own row at steps 1..j (`ttt_attention`), like a depth-j tree node at inference.
        """
        cfg, layer = self.config, self.midlayer
        b, s = input_ids.shape
        rep = cfg.num_heads // cfg.num_kv_heads
        tokens = _shift(input_ids, 1)
        pos0 = torch.arange(s, device=input_ids.device).expand(b, s)
        h = self.fc(features.to(self.fc.weight.dtype))
        keys, values = [], []
        for j in range(cfg.ttt_steps):
            q, k, v = layer.project(self.embed(_shift(tokens, j)), h, pos0 + j)
            keys.append(k.repeat_interleave(rep, 1))
            values.append(v.repeat_interleave(rep, 1))
            h = layer.finish(h, ttt_attention(q, keys, values))
            yield j, h

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Soft-label TTT loss `sum_j decay**j * L_j` (A.2.3 items 5-7, A.5-8, A.5-9).

        Teacher of row t at step j: the target's distribution of x_{t+j+2}, re-normalised over the
        draft vocabulary; rows whose target argmax lies outside it are masked, as are rows with
        `loss_mask[t+j] == 0` (the reference's unshifted mask, A.5-11). L_j is a mean over all B·S
        rows, masked ones included.
        """
        ids, mask = batch["input_ids"], batch["loss_mask"]
        b, s = ids.shape
        with torch.no_grad():
            z = _shift(batch["target_logits"], 1)  # [B, S, V]: row t -> distribution of x_{t+2}
            teacher = torch.softmax(z.index_select(-1, self.draft_token_ids()).float(), -1)  # [B, S, V_d]
            in_vocab = self.t2d[z.argmax(-1)].float()  # [B, S]
            del z
        total = teacher.new_zeros(())
        metrics = {}
        for j, h in self.unroll(ids, batch["features"]):
            logp = torch.log_softmax(self.head(h).float(), -1)  # [B, S, V_d]
            p_j, m_j = _shift(teacher, j), _shift(mask.float(), j)
            pos_mask = m_j * _shift(in_vocab, j)
            loss_j = -(pos_mask[..., None] * p_j * logp).sum() / (b * s)
            total = total + self.config.decay ** j * loss_j
            with torch.no_grad():
                hit = (logp.argmax(-1) == p_j.argmax(-1)).float() * pos_mask
                metrics[f"acc_{j}"] = float(hit.sum() / m_j.sum().clamp_min(1))
                metrics[f"loss_{j}"] = float(loss_j)
        metrics["acc"] = metrics["acc_0"]
        return total, metrics

    # -- inference pieces (A.3.2) ------------------------------------------------------------------------
    def extend(self, cache: RowKVCache, feats: torch.Tensor, tokens: torch.Tensor, counts: list[int],
               device_counts: torch.Tensor | None = None, prefill: bool = False) -> torch.Tensor:
        """Append committed pairs (f_t, x_{t+1}) to the draft cache; returns their outputs `[B, P, H]`.

        `feats [B, P, 3H_t]` and `tokens [B, P]` are valid for the first `counts[b]` entries of row b
        (`device_counts`: the same on the device); pair i of row b sits at position
        `cache.lengths[b] + i` (causal among the new pairs). The `prefill` (a new width every batch) runs
        eager in both regimes, as the target's prefill does.
        """
        positions = cache.begin_write(tokens.shape[1])  # [B, P]
        if prefill:
            out = self.extend_pass(cache, feats, tokens, positions)
        else:
            out = compiled.run(self.target, self.extend_pass, cache, feats, tokens, positions)
        cache.commit_prefix(counts, device_counts)
        return out

    def extend_pass(self, cache: RowKVCache, feats: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor):
        """`extend` on tensors alone, after `begin_write` (captured whole in the compiled regime)."""
        h = self.fc(feats.to(self.fc.weight.dtype))
        q, k, v = self.midlayer.project(self.embed(tokens), h, positions)
        keys, vals = cache.layers[0].update(k, v)  # [B, n_kv, end, d]
        mask = cache.attention_mask(None, q.dtype)  # [B, 1, P, end]
        out = attend(q, keys, vals, mask)
        return self.midlayer.finish(h, out)

    def expand(self, cache: RowKVCache, scratch: list, visible: torch.Tensor, h: torch.Tensor, tokens: torch.Tensor,
               level: int, end: int | None = None) -> torch.Tensor:
        """One tree level: `h, tokens [B, k, ·]` at position `cache.lengths + level` (A.3.2 step 3).

        Nodes see the committed draft cache (slots `< end`, the longest row's length, or a static
        cache's capacity) and, among the scratch nodes of earlier levels and this one, those marked in
        `visible [B, k, n_scratch]` (their ancestors and themselves). Their keys/values are appended to
        `scratch` (a list of `(k, v)`), never to the cache (A.5-16).
        """
        lengths = cache.device_lengths
        positions = (lengths + level)[:, None].expand(h.shape[:2])
        q, k, v = self.midlayer.project(self.embed(tokens), h, positions)
        scratch.append((k, v))
        end = max(cache.lengths) if end is None else end
        layer = cache.layers[0]
        keys = torch.cat([layer.keys[:, :, :end], *(s[0] for s in scratch)], 2)
        vals = torch.cat([layer.values[:, :, :end], *(s[1] for s in scratch)], 2)
        committed = torch.arange(end, device=h.device)[None, :] < lengths[:, None]  # [B, end]
        mask = torch.cat([committed[:, None, :].expand(-1, h.shape[1], -1), visible], -1)[:, None]
        out = attend(q, keys, vals, mask)
        return self.midlayer.finish(h, out)


# -- the dynamic draft tree (A.3.2) -------------------------------------------------------------------------

@torch.inference_mode()
def draft_tree(drafter: Eagle3Drafter, cache: RowKVCache, root: torch.Tensor, last_h: torch.Tensor, top_k: int,
               tree_depth: int, total_tokens: int, return_scores: bool = False):
    """EAGLE-2/3 dynamic tree per row: top-k beam over `tree_depth` levels, then the best
    `total_tokens - 1` of all candidates by cumulative raw draft log-probability (A.3.2, A.5-13).

    `root [B]` is the last emitted token, `last_h [B, H]` the draft output of its pair (the feature
    that predicts the root's child). Candidates are numbered level by level; a child's score never
    exceeds its parent's, and a stable sort puts a parent first on ties, so the kept set is
    ancestor-closed. Kept nodes stay in candidate order: parents precede children and siblings are
    in descending draft score, the order in which the engine tries them. Returns a `TreeBatch`
    (and node scores `[B, N]` with `return_scores`).
    """
    end = cache.capacity if cache.static else max(cache.lengths)
    node_tokens, node_parents, node_scores = compiled.run(drafter.target, tree_nodes, drafter, cache, end, root, last_h,
                                                          top_k, tree_depth, total_tokens)
    if bool((node_parents[:, 1:] < 0).any()):
        raise AssertionError("draft tree is not ancestor-closed")
    tree = TreeBatch.from_parents(node_tokens, node_parents)
    if return_scores:  # cumulative draft log-probability per node, root 0 (for tests)
        return tree, node_scores
    return tree


def tree_nodes(drafter: Eagle3Drafter, cache: RowKVCache, end: int, root: torch.Tensor, last_h: torch.Tensor,
               top_k: int, tree_depth: int, total_tokens: int):
    """`draft_tree`'s tensor work, captured whole in the compiled regime: `(tokens [B, N], parents [B, N],
    scores [B, N])` of the kept nodes, root first (parent -1); the draft cache is read over slots `< end`."""
    b, dev = root.shape[0], root.device
    k = max(1, min(top_k, drafter.config.draft_vocab_size))
    rows = torch.arange(b, device=dev)
    scores, idx = torch.log_softmax(drafter.head(last_h).float(), -1).topk(k)  # [B, k]
    tokens = drafter.to_target(idx)
    cand_scores, cand_tokens = [scores], [tokens]
    cand_parent = [torch.full((b, k), -1, dtype=torch.long, device=dev)]  # candidate index of the parent
    frontier = torch.arange(k, device=dev).expand(b, k)  # candidate indices of the nodes to expand
    h = last_h[:, None].expand(b, k, last_h.shape[-1])
    visible = torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)
    scratch: list = []
    for level in range(tree_depth - 1):
        out = drafter.expand(cache, scratch, visible, h, tokens, level, end)  # [B, k, H]
        logp, child = torch.log_softmax(drafter.head(out).float(), -1).topk(k)  # [B, k, k]
        cum = (logp + scores[:, :, None]).flatten(1)  # [B, k*k], parent-major
        child_tokens = drafter.to_target(child).flatten(1)
        offset = sum(c.shape[1] for c in cand_scores)
        cand_scores.append(cum)
        cand_tokens.append(child_tokens)
        cand_parent.append(frontier.repeat_interleave(k, 1))
        if level + 2 == tree_depth:
            break
        scores, sel = cum.topk(k)  # [B, k]
        parent_row = sel // k
        frontier = offset + sel
        h = out.gather(1, parent_row[..., None].expand(b, k, out.shape[-1]))
        tokens = child_tokens.gather(1, sel)
        anc = visible.gather(1, parent_row[..., None].expand(b, k, visible.shape[-1]))
        visible = torch.cat([anc, torch.eye(k, dtype=torch.bool, device=dev).expand(b, k, k)], -1)
    all_scores = torch.cat(cand_scores, 1)  # [B, M]
    all_tokens = torch.cat(cand_tokens, 1)
    all_parent = torch.cat(cand_parent, 1)
    n = min(total_tokens - 1, all_scores.shape[1])
    keep = torch.sort(all_scores, dim=1, descending=True, stable=True).indices[:, :n].sort(1).values  # [B, n]
    tree_index = torch.full_like(all_parent, -1)
    tree_index[rows[:, None], keep] = torch.arange(1, n + 1, device=dev).expand(b, n)
    parent_cand = all_parent.gather(1, keep)
    parents = torch.where(parent_cand < 0, 0, tree_index.gather(1, parent_cand.clamp_min(0)))
    node_tokens = torch.cat([root[:, None], all_tokens.gather(1, keep)], 1)  # [B, n+1]
    node_parents = torch.cat([torch.full((b, 1), -1, dtype=torch.long, device=dev), parents], 1)
    return node_tokens, node_parents, torch.cat([all_scores.new_zeros(b, 1), all_scores.gather(1, keep)], 1)


# -- decoding (A.3) ---------------------------------------------------------------------------------------------

class Eagle3Decoder(TreeSpeculativeDecoder):
    """The engine's tree decoder with the EAGLE-3 drafter plugged in.

    Draft-cache invariant (A.3.5): it holds the pairs (f_t, x_{t+1}) of every committed position t,
    so its length equals the target cache's, and the last pair's token is the root. The features of
    a step's accepted path are taken from the verification forward in path order and appended at the
    start of the next draft, together with the tokens that follow them (accepted drafts + bonus).
    """

    def __init__(self, target, sampling, generator, drafter: Eagle3Drafter, top_k: int, tree_depth: int,
                 total_tokens: int):
        super().__init__(target, sampling, generator, tree_depth, total_tokens)
        self.drafter, self.top_k, self.tree_depth, self.total_tokens = drafter, top_k, tree_depth, total_tokens
        self.layer_ids = drafter.feature_layers()
        self.pending = None

    def forward(self, ids, cache, **kwargs):
        """Target forward that also keeps the fused features `[B, q, 3H_t]` of its positions (A.5-1, A.5-2)."""
        logits, got = self.target.forward_with_features(ids, cache, self.layer_ids, **kwargs)
        self.features = torch.cat([got[i] for i in self.layer_ids], -1)
        return logits

    @torch.inference_mode()
    def on_prefill(self, logits):
        """Draft pass over the prompt: pairs (f_t, x_{t+1}), the last one carrying the first token (A.3.1)."""
        lengths = [n - 1 for n in self.history.host_lengths]
        width = self.features.shape[1]
        self.draft_cache = RowKVCache(len(lengths), 1, self.cache.capacity, self.target.device,
                                      static=self.cache.static)  # fixed shapes for the captured draft passes
        tokens = self.history.ids[:, 1:width + 1]
        h = self.drafter.extend(self.draft_cache, self.features, tokens, lengths, self.history.lengths - 1,
                                prefill=True)
        self.last_h = h[torch.arange(len(lengths)), self.history.lengths - 2]  # [B, H]

    def on_commit(self, result):
        """Keep the accepted path's features (path order) and the tokens that follow them (A.3.5)."""
        n = result.n_accepted
        # a stopped row commits 0 pairs: its draft cache stays frozen. A static draft cache takes the whole
        # path width (fixed shapes): pairs past a row's count land beyond its length, masked, then overwritten
        m = result.path.shape[1] if self.draft_cache.static else max(result.counts)
        rows = torch.arange(len(n), device=n.device)
        path = result.path[:, :max(m, 1)].clamp_min(0)  # [B, m] tree indices, root first
        feats = self.features[rows[:, None], path]  # [B, m, 3H_t]
        nxt = torch.cat([self.tree.tokens.gather(1, path)[:, 1:], path[:, :1]], 1)  # token after each path node
        nxt[rows, n.clamp(max=path.shape[1] - 1)] = result.bonus
        self.pending = (feats, nxt, result.counts, result.device_counts)

    @torch.inference_mode()
    def step(self, timer, active):
        """The engine's step under inference mode: the caches' buffers are inference tensors."""
        return super().step(timer, active)

    @torch.inference_mode()
    def sync_draft(self, active: torch.Tensor | None = None) -> None:
        """Append the last step's accepted pairs to the draft cache (start of the next draft); rows that
        stopped since (`active` False) keep their draft cache as it is (issue 19)."""
        if self.pending is not None:
            feats, tokens, counts, device_counts = self.pending
            if active is not None and not bool(active.all()):
                device_counts = torch.where(active, device_counts, 0)
                counts = device_counts.tolist()
            h = self.drafter.extend(self.draft_cache, feats, tokens, counts, device_counts)
            newest = h[torch.arange(len(counts), device=h.device), (device_counts - 1).clamp_min(0)]  # [B, H]
            self.last_h = newest if min(counts) > 0 else torch.where((device_counts > 0)[:, None], newest, self.last_h)
            self.pending = None

    def propose_tree(self, active):
        self.sync_draft(active)
        self.tree = draft_tree(self.drafter, self.draft_cache, self.last, self.last_h, self.top_k, self.tree_depth,
                               self.total_tokens)
        return self.tree


# -- the method ---------------------------------------------------------------------------------------------------

class Eagle3Method(Method):
    name = "eagle3"
    description = "EAGLE-3: one-layer drafter on fused low/mid/high target features, training-time test, dynamic tree"
    needs_drafter = True
    default_depth = None  # tree depth: CPU_TREE or PAPER_TREE by device
    drafter_class = Eagle3Drafter
    #: `tree=paper|deep|cpu` picks a preset (default: paper on GPU, cpu on CPU); `--depth`, `top_k`,
    #: `total_tokens` override its fields
    TREE_PRESETS = {"paper": PAPER_TREE, "deep": DEEP_TREE, "cpu": CPU_TREE}
    DECODE_OPTIONS = {"top_k": None, "total_tokens": None, "tree": None}  # explicit arguments; None: the device's
    OPTION_KINDS = {"top_k": integer(1), "total_tokens": integer(2), "tree": one_of(*TREE_PRESETS)}
    DRAFTER_OPTIONS = ("draft_vocab_size", "feature_layers", "ttt_steps", "decay", "head_from_target")
    COMPILED_PASSES = {"captured": ["target tree verify", "draft extension by the accepted pairs (static draft cache)",
                                     "draft tree: every level, top-k and the best-total_tokens selection"],
                       "eager": ["prefill and its draft extension", "tree bookkeeping (TreeBatch) and its "
                                 "ancestor check"]}

    def __init__(self, target, depth: int | None = None, drafter=None, top_k: int | None = None,
                 total_tokens: int | None = None, tree: str | None = None, **options):
        opts = self.split_options({"top_k": top_k, "total_tokens": total_tokens, "tree": tree, **options})
        self.defaults = opts["tree"] or ("paper (GPU)" if target.device.type == "cuda" else "cpu")
        tree = (self.TREE_PRESETS[opts["tree"]] if opts["tree"] else PAPER_TREE if target.device.type == "cuda"
                else CPU_TREE)
        depth = int(depth) if depth is not None else tree["tree_depth"]
        super().__init__(target, depth, **options)
        self.top_k = opts["top_k"] if opts["top_k"] is not None else tree["top_k"]
        self.total_tokens = opts["total_tokens"] if opts["total_tokens"] is not None else tree["total_tokens"]
        if self.depth < 1:
            raise SpecbenchError(f"eagle3 needs --depth >= 1, got {self.depth}")
        self.attach_drafter(drafter)

    @property
    def tree(self) -> dict:
        k = min(self.top_k, self.drafter.config.draft_vocab_size)
        candidates = k + (self.depth - 1) * k * k
        return {"mode": "chain" if k == 1 else "tree", "top_k": k, "tree_depth": self.depth,
                "eagle_depth": self.depth - 1, "total_tokens": min(self.total_tokens, candidates + 1),
                "defaults": self.defaults}

    def make_decoder(self, sampling, generator):
        t = self.tree
        return Eagle3Decoder(self.target, sampling, generator, self.drafter, t["top_k"], t["tree_depth"],
                             t["total_tokens"])

    def describe(self) -> dict:
        cfg = self.drafter.config
        t = self.tree
        notes = ["batch > 1 uses per-row draft and target caches (the reference is batch 1)",
                 "the prompt's draft pass runs in prefill, not in the first draft step",
                 "--depth = tree depth = max drafted tokens per path (EAGLE's depth + 1)"]
        used = {k: t[k] for k in PAPER_TREE}
        if used != PAPER_TREE:
            choice = ("CPU defaults" if used == CPU_TREE else "deep preset, EAGLE depth 8" if used == DEEP_TREE
                      else "user choice")
            notes.append(f"tree {used} ({choice}; paper: {PAPER_TREE})")
        if cfg.head_from_target:
            notes.append("lm_head / norm initialised from the target's LM head rows and final norm (spec: from scratch)")
        if cfg.draft_vocab_size != PAPER_TRAINING["draft_vocab_size"]:
            notes.append(f"draft vocabulary {cfg.draft_vocab_size} of {cfg.vocab_size} (paper: 32000 of 128k-152k)")
        if (cfg.ttt_steps, cfg.decay) != (PAPER_TRAINING["ttt_steps"], PAPER_TRAINING["decay"]):
            notes.append(f"TTT {cfg.ttt_steps} steps, decay {cfg.decay} (paper: 7, 0.8)")
        if cfg.qk_norm:
            notes.append("q/k norms in the draft attention (older specbench Qwen3 drafters; the reference has none)")
        if cfg.norm_before_residual:
            notes.append("residual = hidden_norm(feature) (speculators' norm_before_residual; A.1.3: the raw feature)")
        if self.drafter.training_info.get("published"):
            notes.append(f"published head ({self.drafter.training_info['published']['layout']} layout), as released")
        elif self.drafter.training_info:
            notes.append("trained with the shared trainer and recipe (issue 5; the run's `drafter` block), not "
                         "the paper's data/budget")
        return {"name": self.name, "depth": self.depth, "options": self.options, "drafter": self.drafter_path,
                "drafter_parameters": self.drafter.parameter_count(),
                "tokens_per_target_forward": t["total_tokens"], "tree": t, "paper_tree": PAPER_TREE,
                "deep_tree": DEEP_TREE, "cpu_tree": CPU_TREE, "feature_layers_output_ids": cfg.feature_layers,
                "feature_hf_hidden_state_indices": [i + 1 for i in cfg.feature_layers],
                "draft_vocab_size": cfg.draft_vocab_size, "vocab_coverage": cfg.vocab_coverage,
                "ttt_steps": cfg.ttt_steps, "decay": cfg.decay,
                "faithful": False, "notes": notes}
