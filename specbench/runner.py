"""The runner: one cell = (target, method, suite, temperature, batch size, depth, seed).

Per batch of prompts the method arm and the matched AR arm run back to back, their order
alternating from batch to batch so slow drift (thermal, caches) hits both equally; both arms are
warmed up first (DESIGN.md §4, speedup). Each turn of a multi-turn example is conditioned on that
arm's own previous answers. Both records of a prompt are written and flushed together, so an
interrupted run resumes from the last finished batch (`--resume`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import signal
import sys
from dataclasses import dataclass, field

import torch

from specbench import compiled, provenance
from specbench.decode import generate
from specbench.errors import SpecbenchError
from specbench.metrics import summarize
from specbench.methods import build_method
from specbench.results import ResultStore, RunDir
from specbench.sampling import SamplingConfig
from specbench.suites import get_suite
from specbench.suites.base import Example
from specbench.targets import Target, load_target, resolve_device
from specbench.timing import StepTimer
from specbench.training.store import describe_drafter

#: a T = 0 divergence is a near-tie when, in float32, the method's token is the target's second choice and
#: the top-2 logits differ by less than this fraction of the top logit, for the dtype the run used: fp32
#: noise (CPU kernels, batch shapes) flips only near-exact ties; bf16 keeps 8 mantissa bits (spacing
#: 2^-8 = 3.9e-3 relative per operation, accumulated over the layers), fp16 11 (DESIGN.md §5)
NEAR_TIE_RELATIVE_GAP = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}
WARMUP_TOKENS = 16
#: a run on a CPU without --limit / --max-new-tokens uses the README's CPU measurement protocol (10 prompts
#: x 128 new tokens, "Measured on smollm2-135m"): minutes, where GSM8K's 1319 prompts x 256 tokens take
#: hours on 2 cores. On CUDA the suite's own size (issue 23).
CPU_DEFAULTS = {"limit": 10, "max_new_tokens": 128}


@dataclass
class RunConfig:
    method: str
    suite: str
    target: str = "smollm2-135m"
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 1
    depth: int | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    #: "eager", or "compiled" (`specbench.compiled`: static cache + captured decode forwards, both arms)
    regime: str = "eager"
    drafter: str | None = None
    data_file: str | None = None
    system_prompt: str | None = None
    enable_thinking: bool = False
    warmup: bool = True
    method_options: dict = field(default_factory=dict)
    #: `--category`: only these categories of the suite (issue 13); None = all
    categories: list[str] | None = None
    #: `--no-train`: with `--drafter auto`, fail instead of training a missing drafter (issue 5)
    no_train: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise SpecbenchError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.regime not in ("eager", "compiled"):
            raise SpecbenchError(f"--regime must be eager or compiled, got {self.regime!r}")
        if self.temperature < 0:
            raise SpecbenchError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SpecbenchError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SpecbenchError(f"--top-k must be >= 0, got {self.top_k}")
        if self.depth is not None and self.depth < 1:
            raise SpecbenchError(f"--depth must be >= 1, got {self.depth}")
        if self.limit is not None and self.limit < 1:
            raise SpecbenchError(f"--limit must be >= 1, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise SpecbenchError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")

    def cell_hash(self) -> str:
        keys = ("method", "suite", "target", "temperature", "top_p", "top_k", "batch_size", "depth", "limit",
                "max_new_tokens", "seed", "device", "dtype", "drafter", "data_file", "system_prompt",
                "enable_thinking", "method_options")
        fields = {k: getattr(self, k) for k in keys}
        if self.categories:  # only when set, so the cells of runs without it keep their hash
            fields["categories"] = sorted(self.categories)
        if self.regime != "eager":  # likewise
            fields["regime"] = self.regime
        blob = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def default_run_id(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.target.replace("/", "_").replace(".gguf", "")[-40:]
        return f"{stamp}-{self.method}-{self.suite}-{target}-{self.cell_hash()}"


@dataclass
class ArmTurn:
    prompt_tokens: int
    output_ids: list[int]
    text: str
    ttft_s: float
    decode_s: float
    steps: int
    accept_lengths: list[int]
    draft_lengths: list[int]  # drafts offered per step (per-position acceptance); [] if not reported
    stopped_by: str
    batch_spans_ms: dict | None

    def as_record(self) -> dict:
        d = dataclasses.asdict(self)
        d["new_tokens"] = len(self.output_ids)
        return d


def first_divergence(a: list[list[int]], b: list[list[int]]) -> tuple[int, int] | None:
    """(turn, position) of the first token where two arms differ, or None if identical."""
    for t, (x, y) in enumerate(zip(a, b)):
        for i in range(max(len(x), len(y))):
            if i >= len(x) or i >= len(y) or x[i] != y[i]:
                return t, i
    return None


@torch.inference_mode()
def near_tie(target: Target, prompt_ids: list[int], prefix: list[int], method_token: int | None) -> dict:
    """Where the arms first differ: the target's two best next tokens after `prompt + prefix`, judged in
    float32 whatever dtype the run used (bf16 logits are spaced ~4e-3 apart, too coarse to tell a tie
    from a bug; DESIGN.md §5). Records the absolute and relative top-2 gap, whether the method's token
    is the target's second choice, and the verdict (`NEAR_TIE_RELATIVE_GAP` for the run's dtype)."""
    ids = torch.tensor([prompt_ids + prefix], device=target.device)
    logits = target.float32_logits(ids)[0, -1]
    top = torch.topk(logits, 2)
    first, second = top.values.tolist()
    relative = (first - second) / max(abs(first), 1e-9)
    is_second = method_token is not None and int(top.indices[1]) == int(method_token)
    tolerance = NEAR_TIE_RELATIVE_GAP.get(target.dtype, NEAR_TIE_RELATIVE_GAP[torch.bfloat16])
    return {"top2_gap": first - second, "top2_relative_gap": relative, "method_token_is_second": is_second,
            "judged_in": "float32", "run_dtype": str(target.dtype).replace("torch.", ""),
            "near_tie": bool(is_second and relative < tolerance)}


def device_size(config: RunConfig, suite, n_prompts: int, device_type: str) -> tuple[int | None, int, dict]:
    """(limit, max new tokens, the CPU defaults that filled a field the user left unset) of a run."""
    limit, max_new = config.limit, config.max_new_tokens or suite.default_max_new_tokens
    defaults = {}
    if device_type != "cuda":
        if limit is None and n_prompts > CPU_DEFAULTS["limit"]:
            limit = defaults["limit"] = CPU_DEFAULTS["limit"]
        if config.max_new_tokens is None and max_new > CPU_DEFAULTS["max_new_tokens"]:
            max_new = defaults["max_new_tokens"] = CPU_DEFAULTS["max_new_tokens"]
    return limit, max_new, defaults


def announce_defaults(suite, n_run: int, n_prompts: int, defaults: dict) -> str:
    """One line saying what a CPU run measures and how to get the full suite."""
    full = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                    (("limit", n_prompts), ("max_new_tokens", suite.default_max_new_tokens)) if k in defaults)
    cap = f", at most {defaults['max_new_tokens']} new tokens each" if "max_new_tokens" in defaults else ""
    return (f"on a CPU: {n_run} of {n_prompts} {suite.name} prompts{cap} (CPU defaults, minutes not hours; "
            f"the full suite: {full}, or run on a GPU)")


class Runner:
    def __init__(self, config: RunConfig, store: ResultStore, progress: bool = True, target: Target | None = None,
                 log=print):
        config.validate()
        self.config = config
        self.store = store
        self.progress = progress
        self.graphs_traced_while_timed = 0
        self.suite = get_suite(config.suite)  # fail fast on unknown names before loading a model
        from specbench.methods import method_class
        method_class(config.method)
        loaded = self.suite.load(config.data_file)
        self.data_source = loaded.source
        examples = loaded.examples
        if config.categories:
            examples = self.suite.select_categories(examples, config.categories)
        device = target.device if target is not None else resolve_device(config.device)
        limit, self.max_new_tokens, self.defaults = device_size(config, self.suite, len(examples), device.type)
        self.examples = self.suite.select(examples, limit, config.seed)
        if self.defaults:
            log(announce_defaults(self.suite, len(self.examples), len(examples), self.defaults))
        self.target = target or load_target(config.target, config.device, config.dtype,
                                            system_prompt=config.system_prompt or self.suite.system_prompt,
                                            enable_thinking=config.enable_thinking)
        if config.regime != self.target.regime:
            from specbench.compiled import set_regime

            set_regime(self.target, config.regime)  # both arms run on this target: the regime applies to both
        self.sampling = SamplingConfig(config.temperature, config.top_p, config.top_k)
        from specbench.training.store import resolve_drafter
        drafter = resolve_drafter(config.method, self.target, config.drafter, train=not config.no_train,
                                  options=config.method_options, progress=progress)
        self.method = build_method(config.method, self.target, depth=config.depth, drafter=drafter,
                                   **config.method_options)
        self.baseline = build_method("ar", self.target)
        if config.regime == "compiled":
            self.target.static_slots = compiled.static_capacity(self.run_capacity())

    # -- manifest ------------------------------------------------------------------------------------
    def manifest(self, run_id: str) -> dict:
        return {
            "run_id": run_id,
            "status": "running",
            "config": dataclasses.asdict(self.config),
            "cell": self.config.cell_hash(),
            "resolved": {"max_new_tokens": self.max_new_tokens, "n_prompts": len(self.examples),
                         "prompt_ids": [e.id for e in self.examples], "sampling": dataclasses.asdict(self.sampling),
                         "cpu_defaults": self.defaults or None},
            "target": self.target.describe(),
            "method": {**self.method.describe(),
                       **({"compiled_passes": self.method.COMPILED_PASSES} if self.config.regime == "compiled" else {})},
            "drafter": describe_drafter(path) if (path := getattr(self.method, "drafter_path", None)) else None,
            "suite": {"name": self.suite.name, "description": self.suite.description, "source": self.data_source},
            "arms": {"method": self.config.method, "baseline": "ar"},
            "timing": {"interleaved": "method and AR alternate first/second per batch",
                       "warmup_tokens": WARMUP_TOKENS if self.config.warmup else 0,
                       "clock": "cuda events" if self.target.device.type == "cuda" else "time.perf_counter"},
            "provenance": provenance.collect(self.target.device),
        }

    def run_capacity(self) -> int:
        """Cache slots the longest conversation of the run needs: all its user turns rendered, every answer at
        `max_new_tokens`, and the widest step of either arm (`generate` sizes one batch so). The compiled
        regime's static caches all reserve it, so every batch reuses the warm-up's graphs; a batch that
        needs more (a re-tokenised answer longer than its tokens) gets a larger cache, and its graphs are
        counted in `graphs_traced_while_timed`."""
        step = max(m.make_decoder(self.sampling, None).max_step_tokens for m in (self.method, self.baseline))
        longest = max(len(self.target.render(self._messages(e, [""] * len(e.turns), len(e.turns) - 1)))
                      + len(e.turns) * self.max_new_tokens for e in self.examples) if self.examples else 0
        return longest + step + 1

    # -- decoding ------------------------------------------------------------------------------------
    def _messages(self, example: Example, answers: list[str], turn: int) -> list[dict]:
        msgs = []
        for t in range(turn + 1):
            msgs.append({"role": "user", "content": example.turns[t]})
            if t < turn:
                msgs.append({"role": "assistant", "content": answers[t]})
        return msgs

    def _generator(self, key: str) -> torch.Generator | None:
        if self.sampling.greedy:
            return None
        g = torch.Generator(device=self.target.device)
        g.manual_seed(int(hashlib.sha256(f"{self.config.seed}:{key}".encode()).hexdigest()[:15], 16))
        return g

    def _decode(self, method, prompts: list[list[int]], max_new_tokens: int, gen_key: str):
        timer = StepTimer(self.target.device)
        decoder = method.make_decoder(self.sampling, self._generator(gen_key))
        traced = compiled.graphs_traced()
        out = generate(decoder, prompts, max_new_tokens, self.target.eos_token_ids, timer)
        if gen_key != "warmup":
            self.graphs_traced_while_timed += compiled.graphs_traced() - traced
        elif self.config.regime == "compiled":
            decoder.warm_shapes()
        return out

    def warmup(self, batches: list[list[Example]]) -> None:
        """Both arms decode the first batch briefly; compiled, each decoder then traces the shapes a short
        decode may miss (`Decoder.warm_shapes`), so no graph is compiled inside a timed step. A batch size
        is a shape too: compiled, the arms also decode every smaller number of rows the run will meet (a
        short last batch, a later turn that fewer conversations have)."""
        first = batches[0]
        sizes = [len(first)]
        if self.config.regime == "compiled":
            for batch in batches:
                for turn in range(max(len(e.turns) for e in batch)):
                    rows = sum(len(e.turns) > turn for e in batch)
                    if rows not in sizes:
                        sizes.append(rows)
        for rows in sizes:
            prompts = [self.target.render(self._messages(e, [], 0)) for e in first[:rows]]
            for method in (self.method, self.baseline):
                self._decode(method, prompts, WARMUP_TOKENS, "warmup")

    def run_batch(self, batch_index: int, batch: list[Example]) -> list[dict]:
        arms = [("method", self.method), ("baseline", self.baseline)]
        if batch_index % 2:
            arms.reverse()
        answers = {arm: [[] for _ in batch] for arm, _ in arms}
        turns = {arm: [[] for _ in batch] for arm, _ in arms}
        prompts_ids = {arm: [[] for _ in batch] for arm, _ in arms}
        batch_id = f"b{batch_index}-{batch[0].id}"
        for t in range(max(len(e.turns) for e in batch)):
            rows = [i for i, e in enumerate(batch) if len(e.turns) > t]
            for arm, method in arms:
                prompts = [self.target.render(self._messages(batch[i], answers[arm][i], t)) for i in rows]
                out = self._decode(method, prompts, self.max_new_tokens, f"{batch_id}:{t}:{arm}")
                for j, i in enumerate(rows):
                    row = out.rows[j]
                    text = self.target.decode(row.tokens)
                    answers[arm][i].append(text)
                    prompts_ids[arm][i].append(prompts[j])
                    turns[arm][i].append(ArmTurn(
                        prompt_tokens=len(prompts[j]), output_ids=row.tokens, text=text, ttft_s=out.ttft_s,
                        decode_s=out.decode_s, steps=out.active_steps[j], accept_lengths=row.accept_lengths,
                        draft_lengths=row.draft_lengths,
                        stopped_by=row.stopped_by, batch_spans_ms=out.steps if j == 0 else None))
        records = []
        for i, example in enumerate(batch):
            base_ids = [x.output_ids for x in turns["baseline"][i]]
            meth_ids = [x.output_ids for x in turns["method"][i]]
            # at T > 0 the arms draw different samples: no exact-match claim (DESIGN.md §5); the
            # distribution tests of the lossless kit are the evidence there
            div = first_divergence(meth_ids, base_ids) if self.sampling.greedy else None
            exact = (div is None) if self.sampling.greedy else None
            divergence = None
            if div is not None:
                t, pos = div
                ours = meth_ids[t][pos] if pos < len(meth_ids[t]) else None
                divergence = {"turn": t, "position": pos,
                              **near_tie(self.target, prompts_ids["baseline"][i][t], base_ids[t][:pos], ours)}
            for arm, _ in (("method", None), ("baseline", None)):
                records.append({
                    "prompt_id": example.id, "arm": arm, "method": self.config.method if arm == "method" else "ar",
                    "batch_id": batch_id, "batch_size": len(batch), "row": i,
                    "turns": [x.as_record() for x in turns[arm][i]],
                    "score": self.suite.score(example, answers[arm][i]),
                    "exact_match": exact, "first_divergence": divergence if arm == "method" else None,
                    "meta": example.meta,
                })
        return records

    # -- the run -----------------------------------------------------------------------------------------
    def run(self, run_id: str | None = None, resume: RunDir | None = None) -> RunDir:
        """Run (or resume) the cell, holding the run's write lock throughout: a second process given
        the same --run-id or --resume is refused in one line (issue 24)."""
        run_dir = resume if resume is not None else self.store.create(run_id or self.config.default_run_id())
        with run_dir.writer_lock():
            return self._run(run_dir, resumed=resume is not None)

    def _run(self, run_dir: RunDir, resumed: bool) -> RunDir:
        if resumed:
            run_dir.compact_for_resume()
            manifest = run_dir.read_manifest()
            manifest.setdefault("resumed", []).append(provenance.collect(self.target.device))
            manifest["status"] = "running"
            if manifest["target"]["fingerprint"] != self.target.fingerprint:
                raise SpecbenchError(f"run {run_dir.run_id} was made with another target (fingerprint differs)")
            run_dir.write_manifest(manifest)
        else:
            run_dir.write_manifest(self.manifest(run_dir.run_id))
        done = run_dir.completed_prompt_ids()
        todo = [e for e in self.examples if e.id not in done]
        bs = self.config.batch_size
        batches = [todo[i : i + bs] for i in range(0, len(todo), bs)]
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if todo and self.config.warmup:
                self.warmup(batches)
            bar = _progress(len(self.examples), len(done), self.progress,
                            f"{self.config.method} vs ar on {self.config.suite}")
            for k, batch in enumerate(batches):
                run_dir.append_records(self.run_batch(len(done) // bs + k, batch))
                bar.update(len(batch))
            bar.close()
            summary = summarize(run_dir.load_records())
            summary.update({"run_id": run_dir.run_id, "method": self.config.method, "suite": self.config.suite,
                            "target": self.target.name, "temperature": self.config.temperature,
                            "batch_size": bs, "depth": self.method.depth,
                            "speedup_note": "decode-only excludes prefill; e2e includes it; AR through the same loop"})
            run_dir.write_summary(summary)
        except KeyboardInterrupt:
            _mark(run_dir, status="interrupted")
            raise
        except Exception as e:
            _mark(run_dir, status="failed", error=f"{type(e).__name__}: {e}")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        extra = {}
        if self.config.regime == "compiled":
            # a shape first met after the warm-up is traced and compiled inside a timed step
            extra["graphs_traced_while_timed"] = self.graphs_traced_while_timed
            if self.graphs_traced_while_timed and self.progress:
                print(f"note: {self.graphs_traced_while_timed} graph(s) were compiled inside timed steps (shapes the "
                      "warm-up did not meet); their batches' times include compilation", file=sys.stderr)
        run_dir.update_manifest(status="complete", load_average_end=provenance.load_average(), **extra)
        return run_dir


def _mark(run_dir: RunDir, **fields) -> None:
    """Record why a run stopped, if the disk still takes it; the original error is what the user sees."""
    try:
        run_dir.update_manifest(**fields)
    except SpecbenchError:
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="prompt", dynamic_ncols=True)
