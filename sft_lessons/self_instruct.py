"""Self-Instruct (Wang et al. 2022) in four steps, with a small local model as the generator (第 6 章, notebooks/06_instruction_data.ipynb)."""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from .device import progress

SEED_TASK_FIELDS = {"id": str, "name": str, "instruction": str, "instances": list, "is_classification": bool}

# ---- ROUGE-L (the LCS-based F-measure that Self-Instruct's filter uses) -----------------------------------------


def rouge_tokens(text: str) -> list[str]:
    """Lowercase, non-alphanumerics -> spaces, split: the tokenisation of the rouge_score package (no stemming)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a)*len(b)) dynamic programme)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: 2PR/(P+R) with P = LCS/len(candidate), R = LCS/len(reference)."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def max_rouge_l(candidate: str, pool: list[str]) -> tuple[float, str | None]:
    """(highest ROUGE-L of `candidate` against the pool, the pool text that reached it)."""
    best, best_text = 0.0, None
    for text in pool:
        score = rouge_l(candidate, text)
        if score > best:
            best, best_text = score, text
    return best, best_text


# ---- step 4: filters ----------------------------------------------------------------------------------------------

BLOCKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)  # things a text-only LM cannot do (the Self-Instruct repository's list)


def instruction_rejection(instruction: str, pool: list[str], threshold: float = 0.7) -> str | None:
    """Why Self-Instruct's filters reject `instruction` ('too_short', 'similar', ...), or None to keep it."""
    words = instruction.split()
    if len(words) <= 3:
        return "too_short"
    if len(words) > 150:
        return "too_long"
    lowered = instruction.lower()
    if any(re.search(rf"\b{re.escape(k)}\b", lowered) for k in BLOCKLIST):
        return "blocked_keyword"
    if lowered.startswith("write a program"):
        return "write_a_program"
    if not instruction[0].isascii():
        return "non_ascii"
    if not instruction[0].isalnum():
        return "starts_with_punctuation"
    if max_rouge_l(instruction, pool)[0] >= threshold:
        return "similar"
    return None


def instance_rejection(instance: dict) -> str | None:
    """Why an {input, output} instance is invalid (empty output, input == output, ends with ':'), or None."""
    inp, out = instance.get("input", "").strip(), instance.get("output", "").strip()
    if not out:
        return "empty_output"
    if inp == out:
        return "input_equals_output"
    if inp.endswith(":") or out.endswith(":"):
        return "ends_with_colon"
    if re.search(r"^(?:Input|Output|Task):", inp + "\n" + out, flags=re.M):
        return "format_echo"  # our addition: the model kept writing the prompt's own fields
    return None


# ---- prompts and parsers -----------------------------------------------------------------------------------------


def instruction_prompt(instructions: list[str]) -> str:
    """Step 1: a numbered list of in-context tasks that the LM continues with 'Task k+1:'."""
    lines = [f"Task {i}: {text}" for i, text in enumerate(instructions, start=1)]
    return "Come up with a series of tasks:\n" + "\n".join(lines) + f"\nTask {len(instructions) + 1}:"


def parse_instructions(completion: str, truncated: bool) -> list[str]:
    """Instructions in a step-1 completion; the last one is dropped if generation stopped mid-line."""
    pieces = re.split(r"\n\s*Task \d+:", completion)
    if truncated:
        pieces = pieces[:-1]  # the model ran out of tokens inside this one
    return [p.split("\n")[0].strip() for p in pieces if p.split("\n")[0].strip()]


def classification_prompt(examples: list[tuple[str, bool]], instruction: str | None = None) -> str:
    """Step 2: few-shot 'Is it classification? Yes/No' prompt; with `instruction` it asks about that one."""
    shots = "".join(f"Task: {t}\nIs it classification? {'Yes' if y else 'No'}\n\n" for t, y in examples)
    head = "Can the following task be regarded as a classification task with finite output labels?\n\n"
    return head + shots + (f"Task: {instruction}\nIs it classification?" if instruction is not None else "")


def instance_prompt(task: dict, demos: list[dict], output_first: bool) -> str:
    """Step 3: input-first (Input, then Output) or output-first (Class label, then Input) few-shot prompt."""

    def block(t, inst=None):
        if inst is None:
            return f"Task: {t['instruction']}\n" + ("Class label:" if output_first else "Input:")
        if output_first:
            return f"Task: {t['instruction']}\nClass label: {inst['output']}\nInput: {inst['input']}\n\n"
        return f"Task: {t['instruction']}\nInput: {inst['input'] or '(none)'}\nOutput: {inst['output']}\n\n"

    head = (
        "Given the classification task and a class label, write an input of that class.\n\n"
        if output_first
        else "Come up with an example input and its correct output for each task.\n\n"
    )
    return head + "".join(block(d, d["instances"][0]) for d in demos) + block(task)


def parse_instance(completion: str, output_first: bool, truncated: bool = False) -> dict | None:
    """{'input', 'output'} from a step-3 completion, or None if it cannot be read as one instance."""
    text = completion.split("\n\n")[0].split("\nTask:")[0]
    first, sep, second = text.partition("\nInput:" if output_first else "\nOutput:")
    if not sep:
        if output_first or truncated:
            return None
        first, second = "", text  # "If the task needs no input, generate the output directly"
    first, second = first.strip(), second.strip()
    inp, out = (second, first) if output_first else (first, second)
    return {"input": "" if inp == "(none)" else inp, "output": out}


def instance_demos(seeds: list[dict]) -> dict[bool, list[dict]]:
    """Step-3 demonstrations: the two shortest classification seeds; the shortest seed with and without input."""

    def size(s):
        return len(s["instruction"]) + len(s["instances"][0]["input"]) + len(s["instances"][0]["output"])

    clf = sorted((s for s in seeds if s["is_classification"] and s["instances"][0]["input"]), key=size)[:2]
    other = [s for s in seeds if not s["is_classification"]]
    with_input = min((s for s in other if s["instances"][0]["input"]), key=size)
    without = min((s for s in other if not s["instances"][0]["input"]), key=size)
    return {True: clf, False: [with_input, without]}


# ---- the model calls ---------------------------------------------------------------------------------------------


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, seed: int = 0, **sampling):
    """Seeded, batched sampling -> [(completion, truncated)]; truncated means it stopped at max_new_tokens."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only models continue on the right
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    tokenizer.padding_side = side
    torch.manual_seed(seed)
    kwargs = dict(do_sample=True, temperature=0.7, top_p=0.9) | sampling
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
    new = out[:, batch["input_ids"].shape[1] :]  # (B, <= max_new_tokens)
    done = (new == tokenizer.eos_token_id).any(dim=1).tolist()
    return [
        (tokenizer.decode(row, skip_special_tokens=True), not d) for row, d in zip(new, done, strict=True)
    ]


def yes_probability(model, tokenizer, prefix: str, queries: list[str]) -> list[float]:
    """P(' Yes') / (P(' Yes') + P(' No')) after prefix + query; the shared prefix is encoded once (KV cache)."""
    yes, no = (tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No"))
    pre = tokenizer(prefix, return_tensors="pt").to(model.device)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # each row's last real token answers
    q = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    tokenizer.padding_side = side
    with torch.no_grad():
        cache = copy.deepcopy(
            model(**pre, use_cache=True).cache
        )  # the prefix's keys and values, computed once
        cache.batch_repeat_interleave(len(queries))  # (1, ...) -> (B, ...)
        mask = torch.cat([pre["attention_mask"].expand(len(queries), -1), q["attention_mask"]], dim=1)
        logits = model(input_ids=q["input_ids"], attention_mask=mask, cache=cache).logits  # (B, T, V)
    last = q["attention_mask"].sum(1) - 1  # (B,)
    pair = logits[torch.arange(len(queries)), last][:, [yes, no]].float().softmax(-1)  # (B, 2)
    return pair[:, 0].tolist()


# ---- the loop ----------------------------------------------------------------------------------------------------


@dataclass
class SelfInstructConfig:
    """One Self-Instruct run; defaults fit a few minutes of a 135M model on a 2-core CPU."""

    rounds: int = 2
    prompts_per_round: int = 12
    seed_per_prompt: int = 6  # the paper: 6 human seed tasks + 2 machine tasks per prompt
    machine_per_prompt: int = 2
    max_new_tokens: int = 48
    rouge_threshold: float = 0.7
    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.9
    clf_threshold: float | None = None  # None: fit on the seed tasks' labels (fit_clf_threshold)

    def __post_init__(self):
        if not 0 < self.rouge_threshold <= 1:
            raise ValueError(f"rouge_threshold must be in (0, 1], got {self.rouge_threshold}")
        if self.rounds < 1 or self.prompts_per_round < 1:
            raise ValueError(
                f"rounds and prompts_per_round must be >= 1, got {self.rounds}, {self.prompts_per_round}"
            )


@dataclass
class SelfInstructResult:
    """Every generated instruction with its fate, and the new tasks that survived all four steps."""

    generated: list[dict] = field(
        default_factory=list
    )  # {round, instruction, rejected, is_classification, ...}
    tasks: list[dict] = field(default_factory=list)
    clf_threshold: float = 0.5

    def reasons(self) -> Counter:
        """How many generated instructions each filter rejected ('kept' for the survivors)."""
        return Counter(g["rejected"] or "kept" for g in self.generated)


def clf_demos(seeds: list[dict], k: int = 4) -> list[tuple[str, bool]]:
    """k classification and k other seed instructions, interleaved, as step-2 demonstrations."""
    yes = [s["instruction"] for s in seeds if s["is_classification"]][:k]
    no = [s["instruction"] for s in seeds if not s["is_classification"]][:k]
    return [pair for ab in zip(yes, no, strict=False) for pair in ((ab[0], True), (ab[1], False))]


def fit_clf_threshold(p_yes: list[float], labels: list[bool]) -> float:
    """The P(Yes) cut with the best balanced accuracy on labelled tasks (midpoints between sorted scores)."""
    ps = sorted(set(p_yes))
    cuts = [(a + b) / 2 for a, b in zip(ps, ps[1:], strict=False)] or [0.5]

    def balanced_accuracy(cut):
        hits = [(p > cut) == y for p, y in zip(p_yes, labels, strict=True)]
        pos = [h for h, y in zip(hits, labels, strict=True) if y]
        neg = [h for h, y in zip(hits, labels, strict=True) if not y]
        return (sum(pos) / max(1, len(pos)) + sum(neg) / max(1, len(neg))) / 2

    return max(cuts, key=balanced_accuracy)


def run_self_instruct(model, tokenizer, seeds: list[dict], config: SelfInstructConfig | None = None):
    """Steps 1-4 for config.rounds rounds; returns a SelfInstructResult."""
    cfg = config or SelfInstructConfig()
    rng = random.Random(cfg.seed)
    result = SelfInstructResult()
    pool = [s["instruction"] for s in seeds]
    clf_prefix = classification_prompt(clf_demos(seeds))
    threshold = cfg.clf_threshold
    if threshold is None:
        demo_set = {t for t, _ in clf_demos(seeds)}
        held = [s for s in seeds if s["instruction"] not in demo_set]
        queries = [f"Task: {s['instruction']}\nIs it classification?" for s in held]
        threshold = fit_clf_threshold(
            yes_probability(model, tokenizer, clf_prefix, queries), [s["is_classification"] for s in held]
        )
    result.clf_threshold = threshold
    demo_tasks = instance_demos(seeds)

    for rnd in progress(range(cfg.rounds), "self-instruct rounds"):
        machine = [t["instruction"] for t in result.tasks]
        prompts = []
        for _ in range(cfg.prompts_per_round):  # step 1: 6 seed + 2 machine tasks in context
            m = rng.sample(machine, min(cfg.machine_per_prompt, len(machine)))
            shots = rng.sample(
                [s["instruction"] for s in seeds], cfg.seed_per_prompt + cfg.machine_per_prompt - len(m)
            )
            prompts.append(instruction_prompt(shots + m))
        outs = generate(
            model,
            tokenizer,
            prompts,
            cfg.max_new_tokens,
            cfg.seed + rnd,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
        )
        fresh = []
        for text, truncated in outs:
            for instruction in parse_instructions(text, truncated):
                reason = instruction_rejection(
                    instruction, pool, cfg.rouge_threshold
                )  # step 4 (instructions)
                record = {"round": rnd + 1, "instruction": instruction, "rejected": reason}
                record["max_rouge_l"] = round(
                    max_rouge_l(instruction, pool)[0], 4
                )  # vs the pool at that moment
                result.generated.append(record)
                if reason is None:
                    pool.append(instruction)
                    fresh.append(record)
        if not fresh:
            continue
        p_yes = yes_probability(
            model, tokenizer, clf_prefix, [f"Task: {r['instruction']}\nIs it classification?" for r in fresh]
        )  # step 2
        prompts = []
        for r, p in zip(fresh, p_yes, strict=True):
            r["is_classification"] = p > threshold
            r["p_yes"] = round(p, 3)
            prompts.append(
                instance_prompt(r, demo_tasks[r["is_classification"]], output_first=r["is_classification"])
            )
        outs = generate(
            model,
            tokenizer,
            prompts,
            cfg.max_new_tokens,
            cfg.seed + 100 + rnd,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
        )  # step 3
        for r, (text, truncated) in zip(fresh, outs, strict=True):
            instance = parse_instance(text, r["is_classification"], truncated)
            cut = truncated and "\n\n" not in text and "\nTask:" not in text  # ran out of tokens mid-instance
            why = "truncated" if cut else "no_instance" if instance is None else instance_rejection(instance)
            if why:
                r["rejected"] = f"instance:{why}"
                pool.remove(r["instruction"])
            else:
                r["instances"] = [instance]
                result.tasks.append(r)
    return result
