"""GCPO, CEPO and Gold inside TRL's GRPOTrainer, for runs beyond one GPU. Docs: docs/trl.md.

    from trl import GRPOConfig
    from train_trl import correct
    from trl_trainers.trl_credit import CEPOTrainer
    trainer = CEPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[correct], args=GRPOConfig(...),
                          train_dataset=dataset, lambda_init=0.5)   # + the method's options, our names and defaults
    trainer.train()                                               # accelerate launch / DeepSpeed / vLLM as usual

Each trainer is TRL's GRPOTrainer with one step changed; generation, rewards, the group
advantages, the PPO loss, data parallelism and vLLM stay TRL's. The credit is our pure functions
(gcpo_token_advantages, cepo_token_advantages, inject_gold), called here, not copied:
  GCPOTrainer, CEPOTrainer  after TRL's _generate_and_score_completions, score the same completion
                            tokens under the other contexts with TRL's own log-prob helper (no grad,
                            the training model) and hand TRL's loss a (B, T) advantage tensor, which
                            it accepts (it unsqueezes only a 1-D one) and splits along rows with the
                            rest of the batch. They refuse a sequence-level ratio, under which TRL's
                            loss sees only each row's sum of advantages.
  GoldTrainer               inside TRL's _generate, before TRL rewards the completions: the last
                            completion of each group that the correctness reward finds all wrong
                            becomes the reference solution; TRL then rewards it and computes the
                            advantages and old log-probs as for any row.
Dataset columns (TRL passes them through): `prompt` (plain, templated or conversational), `answer`
(the final answer: CEPO's r+, and Gold's check that a reference survives truncation), `solution`
(Gold's worked reference solution), `question` (GCPO's negative='empty_prompt' only); rename with
answer_column=, solution_column=, question_column=. A group may span processes: CEPO's r- and
Gold's all-wrong test use the whole group, gathered (the same collectives on every rank).
"""
import copy
import dataclasses
import difflib
import inspect
import warnings

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_callable_name, pad

import grpo_baseline as gb
from cepo import CEPOConfig, cepo_token_advantages, hint_ids, lambda_at, wrong_answer_hints
from gcpo import GCPOConfig, divergence, gcpo_token_advantages, negative_text
from gold import GoldConfig, inject_gold, reference_response
from loop.diagnostics import weight_diagnostics

# The GRPOTrainer methods these subclasses call or override; tests/test_trl_credit.py pins them.
TRL_METHODS = ("_generate", "_generate_and_score_completions", "_calculate_rewards", "_tokenize_prompts",
               "_get_per_token_logps_and_entropies", "_compute_loss")
# Loss types whose term multiplies each token's own log-prob, so token advantages act even when
# the ratio is one number per sequence.
PER_TOKEN_LOGP_LOSSES = ("cispo", "vespo")
SKIP_REASONS = ("no_reference", "unparsable_reference", "too_long")  # reference_response's


class CreditTrainer(GRPOTrainer):
    """GRPOTrainer plus the options our method config (CONFIG) adds to GRPO, same names and defaults.
    TRL's own arguments (temperature, num_generations, max_completion_length, epsilon, ...) keep
    TRL's names and meaning."""
    CONFIG = gb.GRPOConfig
    NOT_HERE = {}  # options of our loop this trainer does not implement: name -> why
    COLUMNS = ("answer_column", "solution_column")  # keywords naming dataset columns, read by the subclasses

    @classmethod
    def options(cls):
        """The dataclass fields CONFIG adds to our GRPOConfig: the method's own options."""
        grpo = {f.name for f in dataclasses.fields(gb.GRPOConfig)}
        return [f for f in dataclasses.fields(cls.CONFIG) if f.name not in grpo]

    @classmethod
    def method_config(cls, **settings):
        """Our config of the method from its options (ValueError naming a bad one). model: any
        non-empty value selects our defaults for real models (the reference's hint and wording)."""
        for name in settings.keys() & cls.NOT_HERE.keys():
            raise ValueError(f"{cls.__name__}({name}=...): {cls.NOT_HERE[name]}")
        return cls.CONFIG(model="trl", **settings)

    @classmethod
    def check_keywords(cls, names):
        """A keyword neither GRPOTrainer nor this trainer takes: TypeError naming the closest one."""
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}  # *args, **kwargs
        valid = sorted(((set(inspect.signature(GRPOTrainer.__init__).parameters) - {"self"}) | {f.name for f in cls.options()}
                        | set(cls.COLUMNS) | own) - set(cls.NOT_HERE))  # those reach their refusal, which says why
        for name in sorted(set(names) - set(valid) - set(cls.NOT_HERE)):
            close = difflib.get_close_matches(name, valid, n=1)
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}"
                            + (f": did you mean {close[0]}=?" if close else f"; it takes {', '.join(valid)}"))

    @classmethod
    def check_trl_config(cls, args, method):
        """A GRPOConfig (None: TRL's defaults) this method (our config of it) cannot honour:
        ValueError, before the model loads."""

    def __init__(self, *args, answer_column="answer", solution_column="solution", **kwargs):
        self.check_keywords(kwargs)
        options = {f.name: kwargs.pop(f.name) for f in self.options() if f.name in kwargs}
        self.method = self.method_config(**options)  # bad options fail before the model loads
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(self, *args, **kwargs).arguments
        self.check_trl_config(bound.get("args"), self.method)
        super().__init__(*args, **kwargs)
        self.answer_column, self.solution_column = answer_column, solution_column
        self.method = self.method_config(num_generations=self.num_generations, temperature=self.temperature,
                                         max_completion_length=self.max_completion_length, **options)  # TRL's sampling

    def column(self, inputs, name, role, keyword):
        if name not in inputs[0]:
            dropped = " (GRPOConfig(remove_unused_columns=True) drops every column but the prompt: set it False)" \
                if self.args.remove_unused_columns and set(inputs[0]) <= {"prompt"} else ""
            raise ValueError(f"{type(self).__name__} needs a dataset column {name!r} ({role}); the batch has "
                             f"{sorted(inputs[0])}{dropped}: add it, or name yours with {keyword}=")
        return [str(x[name]) if x[name] is not None else None for x in inputs]

    def logprobs_under(self, contexts, out, rows):
        """log pi(y_t | context, y_<t) of the completions `rows` (1-D index) under new contexts
        (token-id lists, one per scored row, possibly several per completion in order), with TRL's
        own helper, no grad, on the training model. -> (len(contexts), T)."""
        ids = pad([torch.tensor(c) for c in contexts], padding_value=self.processing_class.pad_token_id, padding_side="left")
        mask = pad([torch.ones(len(c), dtype=torch.long) for c in contexts], padding_value=0, padding_side="left")
        return self.teacher_forced(ids, mask, out, rows)

    def own_logprobs(self, out, rows):
        """lp+ = log pi_old of the completions `rows`: TRL's old log-probs when it computed them,
        else the same no-grad forward, on TRL's own padded prompts, that TRL's loss will detach."""
        if out.get("old_per_token_logps") is not None:
            return out["old_per_token_logps"][rows]
        return self.teacher_forced(out["prompt_ids"][rows], out["prompt_mask"][rows], out, rows)

    def teacher_forced(self, ids, mask, out, rows):
        """The completions `rows` after left-padded contexts (ids, mask: one row per scored
        completion, in order, possibly several per completion) -> their log-probs (len(ids), T)."""
        copies, device = len(ids) // len(rows), out["completion_ids"].device
        completion_ids, completion_mask = out["completion_ids"][rows].repeat(copies, 1), out["completion_mask"][rows].repeat(copies, 1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logp, _, _ = self._get_per_token_logps_and_entropies(
                self.model, torch.cat([ids.to(device), completion_ids], 1), torch.cat([mask.to(device), completion_mask], 1),
                completion_ids.size(1), batch_size=self.args.per_device_train_batch_size)
        return logp

    def rows_to_score(self, useful):
        """Rows (1-D index) for the extra forwards: those where they can change the credit
        (`useful`, a (B,) bool), or every row when the parameters are sharded (DeepSpeed ZeRO-3,
        FSDP), where each forward is a collective that every process must join equally often."""
        plugin = self.accelerator.state.deepspeed_plugin
        sharded = self.is_fsdp_enabled or (self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)
        return torch.arange(len(useful), device=useful.device) if sharded else useful.nonzero().squeeze(1)

    def total_reward(self, rewards_per_func):
        """(N,) each completion's reward as TRL sums it: the reward functions weighted, NaN skipped."""
        return (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(1)

    def loss_mask(self, out):
        return out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]

    def log_means(self, sums):
        """Log {key: (sum, count)} as sum / count over every process (one collective, joined by
        all); a key with no count anywhere is not logged."""
        totals = self.accelerator.reduce(torch.tensor([[float(s), float(n)] for s, n in sums.values()],
                                                      device=self.accelerator.device), reduction="sum")
        for key, (total, count) in zip(sums, totals.tolist()):
            if count > 0:
                self._metrics["train"][key].append(total / count)

    def log_range(self, key, values):
        """Log the smallest and largest of `values` (a tensor, maybe empty) over every process."""
        local = torch.tensor([-values.min().item() if values.numel() else -torch.inf,
                              values.max().item() if values.numel() else -torch.inf], device=self.accelerator.device)
        low, high = gather(local).view(-1, 2).max(0).values.tolist()
        if high > -torch.inf:
            self._metrics["train"][f"{key}_min"].append(-low)
            self._metrics["train"][f"{key}_max"].append(high)

    def rollout(self):
        """1-based index of this generation batch, as our loop counts RL steps: TRL generates once
        every steps_per_generation * num_iterations micro-steps. From the optimizer step and the
        micro-step within it, so that a resumed run (TRL restarts its micro-step count at an
        optimizer step) counts as an uninterrupted one."""
        accumulation = self.args.gradient_accumulation_steps
        micro_step = self.state.global_step * accumulation + self._step % accumulation
        return micro_step // (self.args.steps_per_generation * self.num_iterations) + 1


class TokenCreditTrainer(CreditTrainer):
    """A trainer whose credit is a (B, T) advantage: it needs a loss that reads it token by token."""

    @classmethod
    def check_trl_config(cls, args, method):
        level, loss = getattr(args, "importance_sampling_level", "token"), getattr(args, "loss_type", "dapo")
        if level == "sequence" and loss not in PER_TOKEN_LOGP_LOSSES:
            raise ValueError(f"{cls.__name__} with GRPOConfig(importance_sampling_level='sequence', loss_type="
                             f"{loss!r}): TRL's ratio is then one number per completion, so its loss sees only the sum of "
                             f"a completion's token advantages and {cls.CANCELS}; use importance_sampling_level='token' "
                             f"(or loss_type={' or '.join(map(repr, PER_TOKEN_LOGP_LOSSES))}, whose terms keep each "
                             "token's log-prob)")


def prompts_of(out, rows):
    """The unpadded prompt token ids of the completions `rows`."""
    return [p[m.bool()].tolist() for p, m in zip(out["prompt_ids"][rows], out["prompt_mask"][rows])]


def template_tail(tokenizer, **chat_template_kwargs):
    """What the chat template writes after a user turn's text when the reply follows ('<|im_end|>\\n
    <|im_start|>assistant\\n' for Qwen): where a templated string prompt's user turn ends. None
    without a template."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "Q7X9Z"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True,
                                         **chat_template_kwargs)
    return text[text.rindex(marker) + len(marker):]


def negative_messages(prompt, cfg, question=None, blank_question=None, tail=None):
    """GCPO's x- in the prompt's own form, its user turn as gcpo.negative_text builds it: the text
    up to the question is kept, the question and what follows (the instruction) go through
    negative_text. A list of chat messages: the last user turn (its last text part if it has
    parts). A string: the part before `tail` (template_tail) when the string ends with it, so that
    the edit stays inside a templated user turn, else before its trailing whitespace (the newline
    data.prompt_ids ends a plain prompt with). 'wrong_answer' needs no question (the request goes
    at the end of the user turn); 'empty_prompt' needs the question as it appears in the prompt."""
    def edit(text):
        at = text.rfind(question) if question else -1
        if at < 0:
            if cfg.negative == "empty_prompt":
                raise ValueError("GCPOTrainer(negative='empty_prompt') replaces the question in the prompt and keeps the "
                                 f"rest; the prompt does not contain its question {question!r}: add a dataset column "
                                 "holding the question as the prompt writes it, named with question_column=")
            return negative_text(text, "", cfg)
        return text[:at] + negative_text(question, text[at + len(question):], cfg, blank_question)

    if isinstance(prompt, str):
        body = prompt[:-len(tail)] if tail and prompt.endswith(tail) else prompt.rstrip()
        return edit(body) + prompt[len(body):]
    users = [i for i, m in enumerate(prompt) if m["role"] == "user"]
    if not users:
        raise ValueError("GCPOTrainer: a conversational prompt without a user turn has no place for x-'s edit")
    content = prompt[users[-1]]["content"]
    if isinstance(content, str):
        content = edit(content)
    else:
        parts = [j for j, part in enumerate(content) if part.get("type") == "text"]
        content = [dict(part, text=edit(part["text"])) if j == parts[-1] else part for j, part in enumerate(content)]
    return [dict(m, content=content) if i == users[-1] else m for i, m in enumerate(prompt)]


class GCPOTrainer(TokenCreditTrainer):
    """GCPO (gcpo.py) in TRL: token weights from lp+ vs lp- under the negative prompt, (1.1)-(1.5).
    The weights are computed at generation and, after each optimizer step that reuses the
    generation batch (steps_per_generation > gradient_accumulation_steps, or num_iterations > 1),
    recomputed under the current policy for the micro-batch the loss is about to see, as our
    loop's recredit and the reference do."""
    CONFIG = GCPOConfig
    NOT_HERE = {"entropy_coef": "the reference's term coef * mean(-log pi(y_t)) (it lowers entropy) would change TRL's "
                                "loss and is not here: use gcpo.py for it (GRPOConfig(entropy_coef=) is TRL's entropy "
                                "bonus, the opposite sign)"}
    CANCELS = "GCPO's weights (mean 1 per completion) give GRPO's gradient exactly"
    METRICS = ("gcpo/contrast_rows", "gcpo/div_mean", "gcpo/weight_top40_share", "gcpo/weight_entropy")

    def __init__(self, *args, question_column="question", **kwargs):
        super().__init__(*args, **kwargs)
        self.question_column = question_column
        self.tail = template_tail(self.processing_class, **self.chat_template_kwargs)
        self._credit_step = None  # the optimizer step at which the generation batch's weights were computed

    def negatives(self, inputs, rows):
        """x- of the input rows `rows`, tokenized by TRL as it tokenizes prompts."""
        empty = self.method.negative == "empty_prompt"
        questions = self.column(inputs, self.question_column, "the question, for x-", "question_column") if empty else None
        prompts = [negative_messages(inputs[i]["prompt"], self.method, questions[i] if empty else None,
                                     inputs[i].get("blank_question"), self.tail) for i in rows]
        return self._tokenize_prompts(prompts)[0] if prompts else []  # TRL's tokenizer reads prompts[0]

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # TRL's evaluation loss stays GRPO's
            return out
        rows = self.rows_to_score(out["advantages"] != 0)  # A = 0 rows get no credit whatever their weights
        generate_every = self.args.steps_per_generation * self.num_iterations
        recredit = self.args.gradient_accumulation_steps % generate_every != 0  # the policy moves while the batch is used
        negatives = self.negatives(inputs, range(len(inputs)) if recredit else rows.tolist())
        if recredit:  # x- travels with its row through TRL's shuffle and split, for recredit
            device = out["completion_ids"].device
            out["negative_ids"] = pad([torch.tensor(x) for x in negatives], padding_value=self.processing_class.pad_token_id,
                                      padding_side="left").to(device)
            out["negative_mask"] = pad([torch.ones(len(x), dtype=torch.long) for x in negatives], padding_value=0,
                                       padding_side="left").to(device)
            out["sequence_advantages"] = out["advantages"]
            negatives = [negatives[i] for i in rows.tolist()]
        self._credit_step = self.state.global_step
        token_adv = torch.zeros_like(out["completion_mask"], dtype=out["advantages"].dtype)
        stats = dict.fromkeys(self.METRICS, (0, 0))  # every process joins log_means with the same keys
        if len(rows):
            logp_neg = self.logprobs_under(negatives, out, rows)  # (1.2)
            logp_pos = self.own_logprobs(out, rows)  # (1.1)
            mask = self.loss_mask(out)[rows]
            token_adv[rows] = gcpo_token_advantages(out["advantages"][rows], logp_pos, logp_neg, mask,
                                                    self.method.weight_norm, self.method.weight_temperature)  # (1.5)
            stats = self.weight_stats(out["advantages"][rows], token_adv[rows], logp_pos, logp_neg, mask)
        self.log_means(stats)
        out["advantages"] = token_adv
        return out

    @staticmethod
    def weight_stats(adv, token_adv, logp_pos, logp_neg, mask):
        """{metric: (sum, count)} over the rows with A != 0 and a token left in the loss
        (mask_truncated_completions can mask them all): the share whose weights differ from 1 (the
        negative prompt changed their credit), and weight_diagnostics' means."""
        live = (adv != 0) & (mask.sum(1) > 0)
        if not live.any():
            return dict.fromkeys(GCPOTrainer.METRICS, (0, 0))
        weights, mask = token_adv[live] / adv[live, None], mask[live]
        moved = ((weights - 1).abs() * mask).amax(1) > 1e-6
        d = weight_diagnostics(divergence(logp_pos[live], logp_neg[live]), weights, mask)
        rows, tokens = int(live.sum()), int(mask.sum())
        return {"gcpo/contrast_rows": (int(moved.sum()), rows), "gcpo/div_mean": (d["div_mean"] * tokens, tokens),
                "gcpo/weight_top40_share": (d["weight_top40_share"] * rows, rows),
                "gcpo/weight_entropy": (d["weight_entropy"] * rows, rows)}

    def _compute_loss(self, model, inputs):
        if self.model.training and "sequence_advantages" in inputs and self.state.global_step != self._credit_step:
            inputs = dict(inputs, advantages=self.recredit(inputs))
        return super()._compute_loss(model, inputs)

    def recredit(self, inputs):
        """(B, T) advantages of this micro-batch under the current policy: lp+ (1.1) and lp- (1.2)
        re-scored with no grad, then (1.3)-(1.5), as gcpo.gcpo_recredit."""
        adv = inputs["sequence_advantages"]
        rows = self.rows_to_score(adv != 0)
        token_adv = torch.zeros_like(inputs["completion_mask"], dtype=adv.dtype)
        if len(rows):
            logp_pos = self.teacher_forced(inputs["prompt_ids"][rows], inputs["prompt_mask"][rows], inputs, rows)  # (1.1)
            logp_neg = self.teacher_forced(inputs["negative_ids"][rows], inputs["negative_mask"][rows], inputs, rows)  # (1.2)
            token_adv[rows] = gcpo_token_advantages(adv[rows], logp_pos, logp_neg, self.loss_mask(inputs)[rows],
                                                    self.method.weight_norm, self.method.weight_temperature)  # (1.5)
        return token_adv


class CEPOTrainer(TokenCreditTrainer):
    """CEPO (cepo.py) in TRL: (2.1)-(2.4), the two teachers being the training model with the
    answer hint r+ (column `answer`) or r- (the group's lowest-reward rejected answer; rejected =
    TRL's total reward < 1) after the templated prompt. λ follows the generation batch (our
    loop's RL step), not the optimizer step."""
    CONFIG = CEPOConfig
    CANCELS = "CEPO's weights only rescale each completion's advantage"

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # all ranks' rows
        return self._rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # TRL's evaluation stays GRPO's
            return out
        lam = lambda_at(self.rollout(), self.method)  # (2.4)
        self._metrics["train"]["cepo/lambda"].append(lam)
        if lam == 0:  # no teacher pass (the same on every rank)
            return out
        rlsd = self.method.teacher == "rlsd"
        answers = self.column(inputs, self.answer_column, "r+, the final answer", "answer_column")
        plus = [a or "" for a in answers]
        if rlsd:
            minus = plus
        else:
            wrong, share = self.wrong_answers(out)
            self._metrics["train"]["cepo/r_minus_groups"].append(share)
            # r- = r+ where there is no wrong answer (or no answer): Δ = 0, GRPO's credit, as cepo.py
            minus = [m if m is not None and a else a for m, a in zip(wrong, plus)]
        rows = self.rows_to_score((out["advantages"] != 0) & torch.tensor([rlsd or m != a for m, a in zip(minus, plus)],
                                                                          device=out["advantages"].device))
        token_adv = out["advantages"][:, None] * self.loss_mask(out)
        multipliers = torch.ones(0)
        if len(rows):
            prompts = prompts_of(out, rows)
            contexts = [p + hint_ids(self.processing_class, plus[i], self.method) for p, i in zip(prompts, rows.tolist())]
            if not rlsd:
                contexts += [p + hint_ids(self.processing_class, minus[i], self.method) for p, i in zip(prompts, rows.tolist())]
            scored = self.logprobs_under(contexts, out, rows)  # both teachers in one pass
            logp_pos = scored[:len(rows)]
            logp_neg = self.own_logprobs(out, rows) if rlsd else scored[len(rows):]
            mask = self.loss_mask(out)[rows]
            adv = out["advantages"][rows]
            token_adv[rows] = cepo_token_advantages(adv, logp_pos, logp_neg, mask, lam, self.method.epsilon_w)  # (2.1)-(2.3)
            live = adv != 0
            multipliers = (token_adv[rows][live] / adv[live, None])[mask[live] > 0]
        self.log_range("cepo/multiplier", multipliers)
        out["advantages"] = token_adv
        return out

    def wrong_answers(self, out):
        """(r- of each of this rank's rows, the share of groups that have one): its group's
        (wrong_answer_hints), over the whole group, which may span ranks: the texts are gathered,
        TRL's rewards already are."""
        texts = gather_object(self.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True))
        hints = wrong_answer_hints(texts, self.total_reward(self._rewards).cpu(), self.num_generations)
        first = self.accelerator.process_index * len(out["completion_ids"])  # this rank's first row in the gathered batch
        return ([hints[(first + i) // self.num_generations] for i in range(len(out["completion_ids"]))],
                sum(h is not None for h in hints) / len(hints))


class GoldTrainer(CreditTrainer):
    """Gold (gold.py) in TRL: (3.1) before TRL's rewards; TRL's sequence-level ratio is (3.2)-(3.3)
    without our clamp of the log-ratio at 10. A group is all wrong when the correctness reward
    (correctness_reward=, the name of one of reward_funcs; the only one by default) is <= 0 for
    every member, whatever shaping rewards add; a group where it returns None for a member (TRL's
    "does not apply") is not judged. The gold completion is re-rewarded by your reward
    functions (ours forces 1), so a group gains a contrast only if they accept the reference;
    when one does not, a warning says so. The reward functions run twice on a training batch:
    once on the sampled completions to find the all-wrong groups (its logging discarded), once by
    TRL on the final ones. TRL's logged `reward` includes the gold rows; gold/sampled_reward
    does not. (Not TRL's trl.experimental.gold.GOLDTrainer, an unrelated distillation trainer.)"""
    CONFIG = GoldConfig
    NOT_HERE = {"max_log_ratio": "TRL's sequence ratio has no clamp of its own"}

    @classmethod
    def check_trl_config(cls, args, method):
        level, loss = getattr(args, "importance_sampling_level", "token"), getattr(args, "loss_type", "dapo")
        if method.ratio_level != level or (level == "sequence" and loss != "grpo"):
            raise ValueError(f"GoldTrainer(ratio_level={method.ratio_level!r}) with GRPOConfig(importance_sampling_level="
                             f"{level!r}, loss_type={loss!r}): the paper's sequence ratio needs "
                             "GRPOConfig(importance_sampling_level='sequence', loss_type='grpo') (and GSPO's clip "
                             "epsilon=3e-4, epsilon_high=4e-4); for GRPO's token ratio pass ratio_level='token' and "
                             "importance_sampling_level='token'")

    def __init__(self, *args, correctness_reward=None, **kwargs):
        answer, solution = kwargs.get("answer_column", "answer"), kwargs.get("solution_column", "solution")
        if answer == solution:
            raise ValueError(f"GoldTrainer(answer_column={answer!r}, solution_column={solution!r}): Gold needs the final "
                             "answer and the worked reference solution (which it injects) in two columns; put the "
                             "solution in its own column and name it with solution_column=")
        funcs = kwargs.get("reward_funcs", args[1] if len(args) > 1 else None)
        funcs = funcs if isinstance(funcs, list) else [funcs] if funcs is not None else []
        if correctness_reward is None and len(funcs) > 1:
            names = [f if isinstance(f, str) else get_callable_name(f) for f in funcs]
            raise ValueError(f"GoldTrainer with {len(funcs)} reward functions ({', '.join(names)}): name the one that "
                             "decides correctness with correctness_reward=<its name>; a group is all wrong, and gets "
                             "the reference, when it gives every member <= 0 (a shaping reward would hide that)")
        super().__init__(*args, **kwargs)
        name = correctness_reward if isinstance(correctness_reward, str) or correctness_reward is None \
            else get_callable_name(correctness_reward)
        if name is not None and name not in self.reward_func_names:
            close = difflib.get_close_matches(name, self.reward_func_names, n=1)
            raise ValueError(f"GoldTrainer(correctness_reward={name!r}): no reward function of that name; they are "
                             f"{self.reward_func_names}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        self.correctness = 0 if name is None else self.reward_func_names.index(name)
        self._warned = set()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # all ranks' rows
        return self._rewards

    def _generate_and_score_completions(self, inputs):
        self._inputs = inputs  # _generate sees only the prompts; the rows are needed for their references
        self._is_gold = None
        out = super()._generate_and_score_completions(inputs)
        if self._is_gold is not None:
            self.check_gold_rewards(self.total_reward(self._rewards), self._is_gold)
        return out

    def _generate(self, prompts):
        prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest = super()._generate(prompts)
        if self.model.training:
            completion_ids, tool_mask, completions, logprobs = self.inject(self._inputs, prompts, completion_ids, tool_mask,
                                                                           completions, logprobs)
        return (prompt_ids, completion_ids, tool_mask, completions, logprobs, *rest)

    def inject(self, inputs, prompts, completion_ids, tool_mask, completions, logprobs):
        """Swap each gold row's completion for its reference. An injected row has no sampler
        log-probs: None, which TRL reads as NaN and neutralises in its vLLM importance-sampling
        correction (ratio 1)."""
        rows, refs = self.gold_rows(inputs, prompts, completions, completion_ids)
        completion_ids, completions = list(completion_ids), list(completions)
        logprobs = None if logprobs is None else list(logprobs)
        tool_mask = None if tool_mask is None else list(tool_mask)
        for i in rows:
            completion_ids[i] = refs[i]
            text = self.processing_class.decode(refs[i], skip_special_tokens=True)
            completions[i] = [{"role": "assistant", "content": text}] if is_conversational({"prompt": prompts[i]}) else text
            if logprobs is not None:
                logprobs[i] = [None] * len(refs[i])
            if tool_mask is not None:
                tool_mask[i] = [1] * len(refs[i])
        return completion_ids, tool_mask, completions, logprobs

    def gold_rows(self, inputs, prompts, completions, completion_ids):
        """(this rank's rows that become gold, each row's reference token ids or None): (3.1) on
        the whole batch, gathered, since a group may span ranks."""
        pending = copy.deepcopy((self._pending_extra_logs, self._pending_metrics))
        rewards = self._calculate_rewards(inputs, prompts, completions, completion_ids)  # all ranks' rows
        self._pending_extra_logs, self._pending_metrics = pending  # TRL's own call logs them
        correct = rewards[:, self.correctness].nan_to_num(0.0)
        applies = ~rewards[:, self.correctness].isnan().view(-1, self.num_generations).any(1)  # None: not a verdict
        solutions = self.column(inputs, self.solution_column, "the worked reference solution", "solution_column")
        answers = self.column(inputs, self.answer_column, "the final answer", "answer_column")
        refs = [reference_response(self.processing_class, {"solution": s, "answer": a}, self.method) if a else
                (None, "no_reference") for s, a in zip(solutions, answers)]
        why = gather(torch.tensor([0 if ids is not None else 1 + SKIP_REASONS.index(reason) for ids, reason in refs],
                                  device=correct.device))
        G, first = self.num_generations, self.accelerator.process_index * len(prompts)
        last = why.view(-1, G)[:, -1]  # (3.1): the last slot of the group holds the reference
        _, is_gold = inject_gold(correct, G, (last == 0) & applies)  # (3.1)
        all_wrong = (correct.view(-1, G).max(1).values <= 0) & applies
        self._is_gold = is_gold
        metrics = self._metrics["train"]
        metrics["gold/injections"].append(int(is_gold.sum()))
        metrics["gold/all_wrong_groups"].append(int(all_wrong.sum()))
        for code, reason in enumerate(SKIP_REASONS, 1):
            metrics[f"gold/skipped_{reason}"].append(int((all_wrong & (last == code)).sum()))
        if (all_wrong & (last == 1 + SKIP_REASONS.index("unparsable_reference"))).any():
            self.warn_once("unparsable", f"GoldTrainer: a group with all completions wrong got no reference because its "
                           f"column {self.solution_column!r} does not end in the final answer of column "
                           f"{self.answer_column!r} ('#### 42' or '\\boxed{{42}}'); gold/skipped_unparsable_reference "
                           "counts them. Put the worked solution in its own column and name it with solution_column=")
        return is_gold[first:first + len(prompts)].nonzero().squeeze(1).tolist(), [ids for ids, _ in refs]

    def check_gold_rewards(self, total, is_gold):
        """After TRL rewards the final completions: the reward of the sampled ones (TRL's `reward`
        counts the gold rows too), and a warning when a reference is not rewarded above every
        sampled completion of its group (then its group has no contrast it can learn from)."""
        G = self.num_generations
        sampled = total[~is_gold]
        if len(sampled):
            self._metrics["train"]["gold/sampled_reward"].append(sampled.mean().item())
        grouped, gold = total.view(-1, G), is_gold.view(-1, G)
        best_other = torch.where(gold, -torch.inf, grouped).amax(1)
        refused = (gold.any(1) & (grouped[:, -1] <= best_other)).sum()
        self._metrics["train"]["gold/reference_not_best"].append(int(refused))
        if refused:
            self.warn_once("not_best", f"GoldTrainer: {int(refused)} injected reference solution(s) were rewarded no "
                           "higher than the sampled completions of their group, so the group has no contrast: your "
                           "reward functions do not accept the reference (TRL's accuracy_reward, for one, reads the "
                           "column 'solution' as the answer; give Gold's reference its own column with "
                           "solution_column=). gold/reference_not_best counts them")

    def warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)
