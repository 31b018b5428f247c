"""The embedded default: two arithmetic tasks, a character tokenizer and a tiny Llama warm-started
from scratch, so that every method runs in minutes on a CPU with no model hub.

- `chain` (--task chain, the default and the benchmark's): add 4 digits, a running sum per line,
  and every line opens with a two-letter tag the reward ignores, free in the corpus (uniform over
  FREE_LETTERS); 70% of the addition facts are confusable (confusable_slip), so the warm start
  starts at 0.4-0.5. The reward (chain_reward) is 1 only for the whole worked chain, so a right
  answer reached through a wrong step earns 0. Every token has a role, defined by intervention
  (token_roles): free (the tags: changed alone, the reward never changes), decisive (the sums the
  model computes: its choices, where the corpus's slips are), copied (operands, carried totals,
  the final answer) and structure; a decisive, copied or structure token changed alone always
  loses the reward. Each failed response's first wrong token (first_error) is where it was lost.
- `sum` (--task sum): the same without tags, 40% confusable facts (warm start about 0.65).
  Shorter and easier: for tests and quick runs.

Built through the same public APIs as a real run (`datasets.Dataset`, a Hugging Face tokenizer,
`LlamaForCausalLM` saved with `save_pretrained` and loaded back with `AutoModelForCausalLM`).
The warm start also teaches the contexts the credit methods score responses under (CEPO's answer
hints, GCPO's negative prompts), which a pretrained model reads but a model trained from scratch
cannot. Change the task here; nothing in the algorithm files depends on it.
"""
import hashlib
import json
import os
import random
import re
import shutil
import string
from dataclasses import dataclass

import torch
from tqdm import tqdm

from loop.data import answer_reward, evaluate, extract_answer, finite_rewards, load_rows
from loop.language_model import completion_logprobs, pad_batch
from loop.options import opt
from loop.word_task import make_word_task


@dataclass
class TaskOptions:
    """The embedded task's options, part of GRPOConfig (used when --model and --dataset are empty)."""
    cache_dir: str = opt("cache", "where the embedded warm start is cached, keyed by its config")
    task: str = opt("chain", "embedded task: 'chain' (free tags, 70% confusable facts: the benchmark's) or 'sum' (easier)",
                    choices=("chain", "sum"))
    task_operands: int = opt(4, "embedded task: numbers to add per problem")
    task_max_operand: int = opt(9, "embedded task: operands are drawn from 0..this")
    warm_start_steps: int = opt(500, "embedded task: supervised steps of the warm start")
    warm_start_seed: int = opt(0, "embedded task: seed of the warm start (each seed is an independent draw, cached)")


# Contexts the later methods score responses under. The embedded warm start teaches all three, so
# a model trained from scratch can read them as a pretrained LLM reads an instruction.
ANSWER_HINT = "Answer: #### {answer}\n"           # CEPO's teachers: prompt + hint + response
WRONG_ANSWER_INSTRUCTION = " Give a wrong answer."  # GCPO's negative 'wrong_answer': appended to the question
EMPTY_QUESTION = "Answer the question."             # GCPO's negative 'empty_prompt' when a row has no blank_question


FREE_LETTERS = "pqrstuvw"  # chain: each line's tag is two of these, drawn uniformly


def arithmetic_problem(rng, operands, max_operand, tagged=False):
    """One embedded problem: add `operands` numbers, with a worked running-sum solution.

    The answer field is shaped like GSM8K's: the worked solution, then '#### <final>'.
    blank_question is the same question with its operands hidden (the guidance-free prompt).
    """
    nums = [rng.randint(0, max_operand) for _ in range(operands)]
    return {"question": "+".join(map(str, nums)),
            "answer": running_sum_solution(nums, tag=free_tags(rng) if tagged else None),
            "blank_question": "+".join("?" * len(str(n)) for n in nums)}


def free_tags(rng):
    return lambda k: rng.choice(FREE_LETTERS) + rng.choice(FREE_LETTERS) + " "


def running_sum_solution(nums, slip=None, tag=None):
    """'3+5=8\\n8+8=16\\n#### 16'. slip(k, total, n) -> an offset added to step k's sum (a mistake;
    the chain then goes on from the wrong total); tag(k) -> the text line k opens with ('pq ')."""
    lines, total = [], nums[0]
    for k, n in enumerate(nums[1:]):
        new = total + n + (slip(k, total, n) if slip else 0)
        lines.append(f"{tag(k) if tag else ''}{total}+{n}={new}")
        total = new
    return "\n".join(lines) + f"\n#### {total}"


def chain_lines(question):
    """The worked chain of a question '3+5+8', without tags: ['3+5=8', '8+8=16', '#### 16']."""
    nums = [int(n) for n in question.split("+")]
    lines, total = [], nums[0]
    for n in nums[1:]:
        lines.append(f"{total}+{n}={total + n}")
        total += n
    return lines + [f"#### {total}"]


TAG = re.compile(r"[a-z]{2} ")  # a step line may open with one: any two letters, never checked


def chain_reward(response, row):
    """(reward, timed_out), the embedded tasks' reward: 1 only for the question's whole worked
    chain, each step line optionally opening with a tag (TAG). A right final answer reached through
    a wrong step earns 0, so no reward-1 response holds a wrong step (no compensating slips)."""
    *steps, final = chain_lines(row["question"])
    pattern = "\n".join([f"(?:{TAG.pattern})?{re.escape(line)}" for line in steps] + [re.escape(final)])
    return float(re.fullmatch(pattern, response) is not None), False


END = "\x00"  # a response's stop token, in the strings below (the tokenizer is one character per token)


def first_error(tokens, row):
    """Index of a failed response's first wrong token: the earliest after which no continuation
    earns the reward (everything before it is a prefix of the worked chain, so the reward was
    decided there). tokens: the response one character per token, its stop token as END. None when
    the response earns 1, or stops (truncated) before going wrong."""
    return chain_path(tokens, row)[0]


def chain_path(tokens, row, tag=None):
    """(first_error, path): path, a list of characters, is the response up to its first wrong token
    (or its end), then the worked chain on from there, ending with END: the one way the response
    could have gone on to earn the reward, up to the free tags. A line the response had not begun
    opens with the tag `tag()` returns, as the chain corpus tags every line (None: untagged, as the
    sum task's); a tag cut by the error is finished with its letters ('pq ' when None)."""
    *steps, final = chain_lines(row["question"])
    expected = "".join(f"\t{line}\n" for line in steps) + final + END  # \t: where a tag may stand
    path, p, wrong = [], 0, None

    def follow(ok, otherwise):  # the response's next token while it still follows the chain, else `otherwise`
        nonlocal p, wrong
        if wrong is None and p < len(tokens):
            if ok(tokens[p]):
                path.append(tokens[p])
                p += 1
                return
            wrong = p
        path.append(otherwise)
    for k, want in enumerate(expected):
        own = tokens[p] if wrong is None and p < len(tokens) else None  # the response's next token, while it follows
        if want != "\t":
            follow(want.__eq__, want)
        elif own is not None and own.islower():  # the response opens a tag: two letters, a space
            letters = tag() if tag else "pq "
            for ok, otherwise in ((str.islower, letters[0]), (str.islower, letters[1]), (" ".__eq__, " ")):
                follow(ok, otherwise)
        elif own != expected[k + 1]:  # past the response, or wrong here: a tag, as the corpus opens every line
            wrong = p if own is not None else wrong
            path += list(tag() if tag else "")
    return wrong, path


_STEP = re.compile(r"(?:([a-z]{2})( ))?(\d+)(\+)(\d+)(=)(\d+)")
_FINAL = re.compile(r"(#### )(\d+)")
_ROLES = {_STEP: "fscscsd", _FINAL: "sc"}  # per regex group: free, structure, copied, decisive


def token_roles(text):
    """One role letter per character of a response, what the token does: 'd' decisive (the sums
    the model computes), 'c' copied (operands, carried totals, the final answer: each repeats a
    number already written), 'f' free (tags: the reward never reads them), 's' structure (the
    format, and anything that does not parse). Tested by intervention (tests/test_embedded_task.py):
    in a reward-1 response, a free letter changed to any other letter never changes the reward; any
    other character changed to anything else sets it to 0 (the reward checks the whole chain)."""
    roles = ["s"] * len(text)
    start = 0
    for line in text.split("\n"):
        m = _STEP.fullmatch(line) or _FINAL.fullmatch(line)
        for g, role in enumerate(_ROLES[m.re] if m else "", 1):
            if m.start(g) >= 0:
                roles[start + m.start(g):start + m.end(g)] = role * (m.end(g) - m.start(g))
        start += len(line) + 1
    return "".join(roles)


def contested(text, share):
    """Indices of the decisive digits a warm-started policy can get wrong: in each step line, the
    digits of the sum that the corpus's slip for that fact (slip_of) writes differently. The other
    decisive digits are facts the corpus never gets wrong, or digits both answers share."""
    out, start = [], 0
    for line in text.split("\n"):
        m = _STEP.fullmatch(line)
        if m:
            total, n = int(m.group(3)), int(m.group(5))
            right, slip = str(total + n), slip_of(total, n, share)
            if slip and m.group(7) == right:
                wrong = str(total + n + slip)
                out += [start + m.start(7) + k for k in range(len(right))
                        if len(wrong) != len(right) or wrong[k] != right[k]]
        start += len(line) + 1
    return out


ROLES = "sdfc"  # role codes in the tensors below: structure, decisive, free, copied
ROLE_NAMES = ("structure", "decisive", "free", "copied")


def characters(ids, tokenizer):
    """A response's token ids as the strings above read it: one character each, END for the stop token."""
    return [t if len(t) == 1 else END for t in tokenizer.convert_ids_to_tokens(ids)]


def ground_truth(completion_ids, mask, rows, tokenizer, share):
    """The task's labels for a batch of responses: (roles (N, L) long, codes into ROLES;
    first_wrong (N, L) bool, each failed response's first wrong token (first_error); contested
    (N, L) bool (contested)). completion_ids, mask (N, L); rows (N,) task rows."""
    roles = torch.zeros_like(completion_ids)
    first_wrong, disputed = torch.zeros_like(mask, dtype=torch.bool), torch.zeros_like(mask, dtype=torch.bool)
    for i, (ids, n) in enumerate(zip(completion_ids.tolist(), mask.sum(1).long().tolist())):
        tokens = characters(ids[:n], tokenizer)
        text = "".join(tokens).replace(END, "\n")
        roles[i, :n] = torch.tensor([ROLES.index(r) for r in token_roles(text)])
        wrong = first_error(tokens, rows[i])
        if wrong is not None:
            first_wrong[i, wrong] = True
        disputed[i, contested(text, share)] = True
    return roles, first_wrong, disputed


def credit_ground_truth(labels, advantages, token_adv, mask, entropy):
    """Token credit against the ground truth, over the responses with A != 0:
    - credit_{pos,neg}_{role}: the mean multiplier Â_t / A_i on each role's tokens, for A > 0 and
      A < 0 responses apart (GRPO's is 1 everywhere), and credit_pos_contested on the contested digits;
    - first_error_credit: the mean Â_t / |A_i| on failed responses' first wrong tokens (GRPO's -1:
      more negative pushes the mistake down harder; the oracle's is -(response length));
    - decisive_credit_share: the old share of |Â| on decisive tokens, beside the share uniform credit
      gives them (equal for GRPO by construction, and blind to sign; kept for comparison);
    - free_tag_entropy: the policy's entropy on the tags (does credit collapse choices that do not matter?).
    labels: ground_truth's; advantages (N,); token_adv, mask, entropy (N, L)."""
    roles, first_wrong, disputed = labels
    valid = (mask > 0) & (advantages != 0)[:, None]
    multiplier = token_adv / torch.where(advantages == 0, 1.0, advantages)[:, None]
    out = {}
    for sign, side in (("pos", advantages > 0), ("neg", advantages < 0)):
        for code, name in zip(ROLES, ROLE_NAMES):
            on = valid & side[:, None] & (roles == ROLES.index(code))
            if on.any():
                out[f"credit_{sign}_{name}"] = multiplier[on].mean().item()
    on = valid & (advantages > 0)[:, None] & disputed
    if on.any():
        out["credit_pos_contested"] = multiplier[on].mean().item()
    on = valid & first_wrong
    if on.any():
        out["first_error_credit"] = (token_adv / advantages.abs().clamp(min=1e-12)[:, None])[on].mean().item()
    decisive, free = valid & (roles == ROLES.index("d")), (mask > 0) & (roles == ROLES.index("f"))
    if valid.any():
        uniform = advantages.abs()[:, None].expand_as(mask)
        out.update(decisive_credit_share=(token_adv.abs()[decisive].sum() / token_adv.abs()[valid].sum()).item(),
                   decisive_credit_share_uniform=(uniform[decisive].sum() / uniform[valid].sum()).item())
    if free.any():
        out["free_tag_entropy"] = entropy[free].mean().item()
    return out


CONFUSABLE_SHARE = {"sum": 0.4, "chain": 0.7}  # of the addition facts, written wrong half of the time in the corpus


def slip_of(total, n, share):
    """The corpus's mistake on the fact 'total+n': a fixed -1 or +1 for a `share` of the facts
    (confusable ones), 0 for the others. A pure function of the fact, the same in every warm start."""
    fact = random.Random(f"{total}+{n}")
    return fact.choice([-1, 1]) if fact.random() < share else 0


def confusable_slip(rng, share):
    """The warm start's imperfect knowledge: the confusable facts (slip_of) are written wrong in half
    of the corpus's solutions. A model trained on it to convergence has seen both answers of those
    facts and is unsure between them, so it is partially competent, for a reason RL can fix: it
    samples both, and the reward tells them apart."""
    def slip(k, total, n):
        delta = slip_of(total, n, share)
        return delta if delta and rng.random() < 0.5 else 0
    return slip


def make_arithmetic_task(cfg, train_size=4000):
    """Embedded task as a DatasetDict {train, test} with GSM8K-shaped fields; no question in both."""
    from datasets import Dataset, DatasetDict
    if (cfg.task_max_operand + 1) ** cfg.task_operands < 2 * (train_size + cfg.eval_size):
        raise ValueError(f"--task_operands {cfg.task_operands} / --task_max_operand {cfg.task_max_operand}: too few "
                         f"distinct problems for {train_size} training and {cfg.eval_size} held-out ones")
    rng = random.Random(1234)  # the task is fixed; cfg.seed varies the RL run, not the problems
    rows, seen = [], set()
    while len(rows) < train_size + cfg.eval_size:
        row = arithmetic_problem(rng, cfg.task_operands, cfg.task_max_operand, tagged=cfg.task == "chain")
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return DatasetDict(train=Dataset.from_list(rows[cfg.eval_size:]), test=Dataset.from_list(rows[:cfg.eval_size]))


def load_task(cfg):
    """(train rows, eval rows): --dataset's; with none, a pretrained --model's sums in words
    (word_task.py), or the embedded model's arithmetic task."""
    if not cfg.dataset and cfg.model:
        return make_word_task(cfg)
    return load_rows(cfg, None if cfg.dataset else make_arithmetic_task(cfg))


def task_reward(cfg):
    """reward(response, row) -> (0/1, timed_out): the final answer (a dataset's, the words task's),
    or the embedded task's whole worked chain."""
    return answer_reward if cfg.dataset or cfg.model else chain_reward


def verified_rewards(texts, rows, cfg, stats):
    """Each response's reward from task_reward, checked finite; answer checks that timed out are
    counted in stats["verify_timeouts"]."""
    reward_of = task_reward(cfg)
    checked = [reward_of(t, r) for t, r in zip(texts, rows)]
    stats["verify_timeouts"] = stats.get("verify_timeouts", 0) + sum(timed_out for _, timed_out in checked)
    return finite_rewards([reward for reward, _ in checked])


def char_tokenizer():
    """A character-level Hugging Face tokenizer (save_pretrained / AutoTokenizer round-trip)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII, so chat templates tokenize
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def warm_start_corpus(rng, row, cfg):
    """One supervised example (context text, response text) for the embedded warm start.

    Solutions come with the corpus's imperfect knowledge (confusable_slip). Most examples (55%) are
    plain question -> solution. A minority teach the contexts the other methods score responses
    under, which a model trained from scratch cannot otherwise read:
    - CEPO's teachers: an answer hint before the solution, right (10%), or wrong (25%) with the
      solution's steps and the hint as its final answer: a writer told the answer writes it down.
      The hint is written as the answer line ('Answer: #### 13') so that reading it is a copy of a
      string seen before, which a tiny model learns. (With the hint as a sentence, with 12% of wrong
      hints, or with the error inside the steps, it never learned to read the hint in our tries.)
    - GCPO's negative prompts: a request for a wrong answer (5%), answered with one more mistake at
      a random step, and the question with its operands blanked (5%), answered with a solution.
    """
    nums = [int(n) for n in row["question"].split("+")]
    slip, tag = confusable_slip(rng, CONFUSABLE_SHARE[cfg.task]), free_tags(rng) if cfg.task == "chain" else None
    solution = running_sum_solution(nums, slip, tag)
    written = int(extract_answer(solution))
    u = rng.random()
    if u < 0.10:
        return row["question"] + "\n" + ANSWER_HINT.format(answer=written), solution
    if u < 0.35:
        hint = written + rng.choice([-3, -2, -1, 1, 2, 3])
        return row["question"] + "\n" + ANSWER_HINT.format(answer=hint), solution.rsplit("####", 1)[0] + f"#### {hint}"
    if u < 0.40:
        step, error = rng.randrange(len(nums) - 1), rng.choice([-3, -2, -1, 1, 2, 3])
        wrong = running_sum_solution(nums, lambda k, total, n: slip(k, total, n) + (error if k == step else 0), tag)
        return row["question"] + WRONG_ANSWER_INSTRUCTION + "\n", wrong
    if u < 0.45:
        return row["blank_question"] + "\n", solution
    return row["question"] + "\n", solution


def warm_start_spec(cfg):
    """What shapes the warm start of cfg, and the folder it is cached in (keyed by all of it)."""
    spec = {"version": 10, "confusable": CONFUSABLE_SHARE[cfg.task], "layers": 4, "hidden": 128, "heads": 4, "steps": cfg.warm_start_steps,
            "batch": 64, "lr": 3e-3, "operands": cfg.task_operands, "max_operand": cfg.task_max_operand,
            "vocab": char_tokenizer().get_vocab(), "task": cfg.task, "seed": cfg.warm_start_seed}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return spec, os.path.join(cfg.cache_dir, f"warmstart-{key}")


def is_built(path):
    """Whether a warm start was written whole to path (warm_start.json goes last)."""
    return os.path.exists(os.path.join(path, "warm_start.json"))


def warm_start(cfg, train_rows, eval_rows, device):
    """Path of the embedded model: a tiny Llama trained from scratch on the task to partial
    competence, cached on disk keyed by everything that shapes it (so every method and seed
    starts from the same weights); --warm_start_seed draws an independent one."""
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.exists(cfg.cache_dir) and not os.path.isdir(cfg.cache_dir):
        raise ValueError(f"--cache_dir {cfg.cache_dir} is a file, not a directory; choose another --cache_dir")
    tokenizer = char_tokenizer()
    spec, path = warm_start_spec(cfg)
    if is_built(path):
        return path
    torch.manual_seed(cfg.warm_start_seed)
    rng = random.Random(cfg.warm_start_seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec["hidden"], intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    losses = []
    for step in tqdm(range(spec["steps"]), desc="warm start (supervised)", leave=False):
        pairs = [warm_start_corpus(rng, rng.choice(train_rows), cfg) for _ in range(spec["batch"])]
        contexts = [tokenizer(c).input_ids for c, _ in pairs]
        responses = [tokenizer(r).input_ids + [tokenizer.eos_token_id] for _, r in pairs]
        batch = pad_batch(contexts, responses, tokenizer.pad_token_id, device)
        for group in optimizer.param_groups:  # linear warm-up over the first 10%, then linear decay to 0
            group["lr"] = spec["lr"] * min((step + 1) / max(1, spec["steps"] // 10), 1 - step / spec["steps"])
        logp, _ = completion_logprobs(model, *batch, temperature=1.0, micro_batch_size=spec["batch"], grad=True)
        loss = -(logp * batch[3]).sum() / batch[3].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    acc = evaluate(model, tokenizer, eval_rows, cfg, device, "", chain_reward)
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump({"spec": {k: v for k, v in spec.items() if k != "vocab"}, "eval_acc": acc,
                   "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}, f, indent=1)
    try:
        os.rename(tmp, path)  # atomic: a half-written warm start is never picked up
    except OSError:           # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return path
