"""BiTA (methods/bita.py): the spec's layouts (bita_mtp_flexdraft.md A.4, A.5.2, A.6.1, A.6.2), the frozen AR
path, training (loss, shared trainer) and the lossless kit in both layouts."""

from __future__ import annotations

import functools

import pytest
import torch

from specbench.engine.tree import TreeBatch
from specbench.errors import SpecbenchError
from specbench.methods import build_method
from specbench.methods.bita import CPU_LAYOUT, BiTADrafter, BiTAMethod, device_layout, group_layout, tree_parents
from specbench.sampling import SamplingConfig
from specbench.testing import lossless
from specbench.timing import StepTimer

FAMILIES = ["tiny-random-llama", "tiny-random-qwen3"]
TEXTS = ["hi", "def add(a, b):", "How many clips did Natalia sell altogether?",
         "Write a story about a robot who learns to paint.", "for i in range(10):\n    if i % 2 == 0:",
         "Translate the following sentence into French: the cat sleeps on the warm mat."]


@pytest.fixture(autouse=True)
def _one_thread():
    with lossless.one_thread(pause_gc=False):
        yield


def _grid(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r.split()] for r in rows])


@functools.lru_cache(maxsize=4)
def self_distilled(name: str, max_new_tokens: int = 32) -> dict:
    """Prompts + the tiny target's own greedy continuations as a training batch (A.5.1)."""
    from specbench.decode import generate

    target = lossless.load_tiny(name)
    prompts = [target.render([{"role": "user", "content": t}]) for t in TEXTS]
    out = generate(build_method("ar", target).make_decoder(SamplingConfig(), None), prompts, max_new_tokens,
                   target.eos_token_ids, StepTimer(target.device))
    seqs = [p + r.tokens for p, r in zip(prompts, out.rows)]
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    loss_mask = torch.zeros_like(ids)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, len(p): len(s)] = 1
    return {"input_ids": ids, "loss_mask": loss_mask, "lengths": torch.tensor(list(map(len, seqs)))}


@functools.lru_cache(maxsize=4)
def trained(name: str, steps: int = 150) -> tuple[BiTADrafter, list[float]]:
    """A tiny drafter (M = 3, P = 4) trained for a few seconds (lr 0.1: the random tiny target is hard to
    steer): enough acceptance for deep accepted paths."""
    target = lossless.load_tiny(name)
    batch = self_distilled(name)
    torch.manual_seed(0)
    drafter = BiTADrafter.for_target(target, num_masks=3, num_prompts=4, max_groups=16)
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-1)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss, _ = drafter.loss(batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return drafter.eval(), losses


def bita(target, **options) -> BiTAMethod:
    if target.name in FAMILIES:
        drafter = trained(target.name)[0]
    else:  # the kit's 4-token distribution target: a fresh drafter
        torch.manual_seed(0)
        drafter = BiTADrafter.for_target(target, num_masks=3, num_prompts=2).eval()
    return build_method("bita", target, drafter=drafter, **options)


# -- layouts against the spec's diagrams ---------------------------------------------------------------

def test_training_layout_is_the_a52_diagram():
    """A.5.2: prompt p0 p1, response r0..r5, M = 2, starts {1, 2} (anchors r0, r1); groups see their own
    prefix, causal inside the group, not each other; slot j sits at the anchor's position + 1 + j."""
    s = 8
    positions = torch.arange(s)[None]
    causal = torch.ones(1, s, s, dtype=torch.bool).tril()
    pos, see = group_layout(torch.tensor([0]), positions, torch.tensor([[2, 3]]), causal, 2)
    expected = _grid(["1 1 1 . 1 . . .", "1 1 1 . 1 1 . .", "1 1 1 1 . . 1 .", "1 1 1 1 . . 1 1"])
    assert torch.equal(torch.cat([see[0, 0, :, :4], see[0, 0, :, s:]], 1), expected)
    assert not see[0, 0, :, 4:s].any()  # the future clean tokens r2..r5
    assert pos[0].tolist() == [3, 4, 4, 5]


def test_chain_step_layout_is_the_a61_diagram():
    """A.6.1 (M = 2), KV-cached (A.6.5): pending [b, c0, c1] with groups G0 (root b), G1 (c0), G2 (c1);
    two committed slots. Positions as offsets from b's position + 1."""
    intra = torch.ones(3, 3, dtype=torch.bool).tril()[None]
    positions = torch.tensor([[2, 3, 4]])
    pos, see = group_layout(torch.tensor([2]), positions, torch.tensor([[0, 1, 2]]), intra, 2)
    v = see[0, 0]
    assert v[:, :2].all()  # the committed prefix
    assert v[:, 2].all()  # b is every group's context (the release's last committed token)
    expected = _grid([". . 1 . . . . .", ". . 1 1 . . . .", "1 . . . 1 . . .", "1 . . . 1 1 . .",
                      "1 1 . . . . 1 .", "1 1 . . . . 1 1"])  # columns c0 c1 | G0 G1 G2 slots
    assert torch.equal(v[:, 3:], expected)
    assert (pos[0] - 3).tolist() == [0, 1, 1, 2, 2, 3]


def test_tree_step_layout_is_the_a62_diagram():
    """A.6.2 (M = 2, K_c = 2): nodes n0.0, n0.1 at depth 1, n1.0 under the spine n0.0; a group per node."""
    parents, sizes = tree_parents(2, 2, vocab=100)
    assert parents == [-1, 0, 0, 1] and sizes == [2, 1]
    from specbench.engine.tree import TreeBatch

    tb = TreeBatch.from_parents(torch.zeros(1, 4, dtype=torch.long), torch.tensor([parents]))
    positions = tb.depths
    _, see = group_layout(torch.tensor([0]), positions, torch.arange(4)[None], tb.intra, 2)
    nodes = see[0, 0, 2:, 1:4]  # groups of n0.0, n0.1, n1.0 over the node columns
    assert torch.equal(nodes, _grid(["1 . .", "1 . .", ". 1 .", ". 1 .", "1 . 1", "1 . 1"]))
    assert torch.equal(tb.depths[0], torch.tensor([0, 1, 1, 2]))


def test_tree_shapes():
    """Upper-triangle 5+4+3 (M = 3) and 5+4+3+2 (M = 4); top_k 1 is the chain; the vocabulary clamps."""
    assert tree_parents(3, 5, 1000)[1] == [5, 4, 3] and len(tree_parents(3, 5, 1000)[0]) == 13
    assert tree_parents(4, 5, 1000)[1] == [5, 4, 3, 2]
    assert tree_parents(3, 1, 1000)[0] == [-1, 0, 1, 2]
    parents, sizes = tree_parents(3, 5, 4)
    assert sizes == [4, 4, 3] and parents[5:9] == [1] * 4 and parents[9:] == [5] * 3


# -- the AR path is the target ------------------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_clean_logits_are_bit_identical_to_the_target(name):
    """The same tree step through BiTA's joint pass and through `Target.forward`: clean logits equal bit
    for bit, with trained parameters and with the prompt / mask parameters scrambled."""
    target = lossless.load_tiny(name)
    drafter = trained(name)[0]
    prompts = [target.render([{"role": "user", "content": t}]) for t in TEXTS[:3]]
    tokens = torch.tensor([[5, 9, 11, 12, 7, 3, 2], [1, 4, 4, 8, 9, 10, 6], [2, 2, 3, 5, 8, 13, 21]])
    tb = __import__("specbench.engine.tree", fromlist=["TreeBatch"]).TreeBatch.from_parents(
        tokens, torch.tensor([[-1, 0, 0, 1, 1, 3, 2]]).expand(3, 7))

    def step(fn):
        from specbench.decode import prefill_batch

        cache, _, _ = prefill_batch(target, prompts, 64, SamplingConfig(), None)
        return fn(tb.tokens, cache)

    plain = step(lambda ids, c: target.forward(ids, c, intra=tb.intra, depths=tb.depths))
    anchors = torch.arange(7).expand(3, 7)
    joint, groups = step(lambda ids, c: drafter.joint_forward(ids, c, anchors, 3, tb.intra, tb.depths))
    assert torch.equal(joint, plain)
    assert groups.shape == (3, 7, 3, target.config.hidden_size)
    scrambled = BiTADrafter(drafter.cfg).attach(target).to(torch.float32).eval()
    with torch.no_grad():
        scrambled.prefix.normal_(0, 5)
        scrambled.mask_embedding.normal_(0, 5)
    joint2, groups2 = step(lambda ids, c: scrambled.joint_forward(ids, c, anchors, 3, tb.intra, tb.depths))
    assert torch.equal(joint2, plain)
    assert not torch.allclose(groups2, groups)  # the parameters do reach the mask rows


# -- training --------------------------------------------------------------------------------------------

def test_loss_goes_down_and_groups_follow_a52():
    name = "tiny-random-llama"
    drafter, losses = trained(name)
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    batch = self_distilled(name)
    anchors, keep = drafter.sample_groups(batch["loss_mask"], torch.Generator().manual_seed(1))
    lm = batch["loss_mask"]
    for r in range(lm.shape[0]):
        a = anchors[r][keep[r]]
        assert 0 < a.numel() <= drafter.cfg.max_groups
        assert torch.equal(a, torch.arange(int(a[0]), int(a[0]) + a.numel()))  # a window of consecutive starts
        first = int(lm[r].nonzero()[0])
        assert int(a[0]) >= first - 1 and bool(lm[r, a[-1] + 1: a[-1] + 2 + drafter.cfg.num_masks].all())
    loss, metrics = drafter.loss(batch)
    assert 1.0 <= metrics["tau_estimate"] <= 4.0 and metrics["acc"] > 0.2


@pytest.mark.parametrize("name", FAMILIES)
def test_group_positions_and_labels_with_oracle_masks(name):
    """Alignment of A.5.2 (positions, visibility, next-position labels, §1.2): with the prompts removed and
    each mask slot fed the embedding of the token at its own position, a group is the target's own causal
    pass, so every slot predicts its label exactly (the data are the target's greedy tokens)."""
    target = lossless.load_tiny(name)
    drafter = trained(name)[0]
    batch = self_distilled(name)
    ids = batch["input_ids"]
    anchors, keep = drafter.sample_groups(batch["loss_mask"], torch.Generator().manual_seed(0))
    m = drafter.cfg.num_masks
    at = anchors[..., None] + 1 + torch.arange(m)  # slot j sits at a + 1 + j
    oracle = target.model.get_input_embeddings()(ids.gather(1, at.flatten(1)))  # [N, G*M, H]
    drafter._prompts = lambda: drafter.prefix[:0]
    drafter.mask_rows = lambda batch, groups, masks: oracle
    try:
        _, metrics = drafter.loss({**batch, "anchors": anchors, "anchor_keep": keep})
    finally:
        del drafter._prompts, drafter.mask_rows
    assert metrics["acc"] == 1.0 and metrics["tau_estimate"] == m + 1


def test_shared_trainer_runs_bita(tmp_path):
    """Two steps through the shared trainer with BiTA's training defaults (A.5.4), then a reload."""
    from specbench.training.data import TrainExample
    from specbench.training.trainer import TrainConfig, train

    name = "tiny-random-qwen3"
    target = lossless.load_tiny(name)
    batch = self_distilled(name)
    examples = [TrainExample(id=str(i), input_ids=ids[:n].tolist(), loss_mask=lm[:n].tolist())
                for i, (ids, lm, n) in enumerate(zip(batch["input_ids"], batch["loss_mask"], batch["lengths"].tolist()))]
    torch.manual_seed(0)
    drafter = BiTADrafter.for_target(target, num_masks=2, num_prompts=2, max_groups=8)
    cfg = TrainConfig(steps=2, batch_size=2, eval_size=2, **BiTADrafter.training_defaults)
    before = drafter.prefix.detach().clone()
    result = train(drafter, target, examples[:4], examples[4:], cfg, tmp_path, {"method": "bita"}, progress=False,
                   log=lambda *_: None)
    assert result.steps == 2 and "acc" in result.final_eval
    assert not torch.equal(before, drafter.prefix.detach())


def test_save_load_round_trip_registry_and_describe(tmp_path):
    name = "tiny-random-qwen3"
    target = lossless.load_tiny(name)
    drafter = trained(name)[0]
    drafter.save(tmp_path / "bita")
    loaded = BiTADrafter.load(tmp_path / "bita", target)
    assert sorted(loaded.state_dict()) == ["mask_embedding", "prefix"]
    for k, v in drafter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    method = build_method("bita", target, drafter=str(tmp_path / "bita"), tree="chain")
    d = method.describe()
    assert d["faithful"] is False and any("[recon]" in n for n in d["notes"])  # the report must warn
    counts = drafter.parameter_counts()
    assert d["drafter_parameters"] == counts["total"] == drafter.parameter_count()
    assert counts["prefix"] == 4 * target.num_layers * 2 * target.config.num_attention_heads * drafter.cfg.head_dim
    assert d["depth"] == 3 and d["tokens_per_target_forward"] == 1 + 3 + 4 * 3  # b + M(M+2), A.6.1
    tree = build_method("bita", target, drafter=str(tmp_path / "bita"), tree="tree").describe()
    assert tree["tree"]["nodes_per_level"] == [5, 4, 3] and tree["tokens_per_target_forward"] == 1 + 12 + 13 * 3
    assert build_method("bita", target, drafter=drafter, depth=2, tree="tree").describe()["tokens_per_target_forward"] \
        == 1 + 9 + 10 * 2
    for bad in ({"tree": "full"}, {"depth": 4}, {"num_masks": 4}, {"colour": 1}):
        with pytest.raises(SpecbenchError):
            build_method("bita", target, drafter=drafter, **bad)


def test_layout_default_is_the_tree_on_cuda_and_the_chain_on_a_cpu():
    """Issue 23: the CPU default has fewer rows per pass (module docstring); an explicit layout wins."""
    assert device_layout("cuda") == "tree" and device_layout("cpu") == CPU_LAYOUT == "chain"
    target = lossless.load_tiny("tiny-random-llama")
    d = bita(target).describe()
    assert d["tree"]["layout"] == "chain" and any("CPU default layout" in n for n in d["notes"])
    assert bita(target, tree="tree").describe()["tree"]["layout"] == "tree"


def test_the_fixed_tree_is_built_once_and_stopped_rows_are_cut_by_the_engine():
    """The step's tree is the same every step: its masks/depths/children are built once per batch size and
    must equal a fresh build with the new tokens; a stopped row keeps the shape, and the engine's
    `TreeBatch.only` leaves it nothing to accept below its root (issue 19)."""
    target = lossless.load_tiny("tiny-random-llama")
    dec = bita(target).make_decoder(SamplingConfig(), None)
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    dec.prefill(prompts, 64)
    fields = ("tokens", "parents", "depths", "intra", "children", "valid")
    built = None
    for active in ([True, True], [True, True], [False, True], [True, True]):
        act = torch.tensor(active)
        got = dec.propose_tree(act)
        assert torch.equal(got.tokens, dec._next_tree())
        fresh = TreeBatch.from_parents(got.tokens, dec._parents.expand(got.tokens.shape))
        assert all(torch.equal(getattr(got, f), getattr(fresh, f)) for f in fields), active
        built = built or dec._shape
        assert dec._shape is built  # never rebuilt
        cut = got.only(act)
        assert bool((cut.children[0] >= 0).any()) == active[0] and bool((cut.children[1] >= 0).any())
        dec._selected = dec._selected.roll(1, 0)  # other rows' groups: other tokens next time


# -- lossless (the shared kit) ------------------------------------------------------------------------------

def _accepted(outputs) -> list[int]:
    return [a for outs in outputs.values() for o in outs for r in o.rows for a in r.accept_lengths]


def test_lossless_tree():
    """Kit: T = 0 at batch 1/4/8 = AR, cache = fresh forward after every step, T = 1 distribution;
    tiny Llama and Qwen3; the release's upper-triangle tree (5+4+3), the GPU default."""
    outputs = lossless.assert_lossless(lambda t: bita(t, tree="tree"), n_samples=2 ** 16)
    accepted = _accepted(outputs)
    assert max(accepted) >= 3 and sum(accepted) / len(accepted) > 1.1


def test_lossless_chain():
    """The same kit for A.6.1's chain (one candidate per depth)."""
    outputs = lossless.assert_lossless(lambda t: bita(t, tree="chain"), n_samples=2 ** 16)
    accepted = _accepted(outputs)
    assert max(accepted) >= 3 and min(accepted) == 1


def test_the_head_and_top_k_over_the_selected_group_are_draft_time():
    """Timing contract (DESIGN.md §4): BiTA drafts inside the verify pass; the LM head and top-k over the
    selected mask group that build the next tree are draft time."""
    from specbench.testing.spans import assert_draft_work_in_draft_span

    target = lossless.load_tiny("tiny-random-llama")
    method = bita(target)
    assert_draft_work_in_draft_span(method, target, method.drafter, "mask_logits")
