"""GCPO, CEPO and Gold inside TRL's GRPOTrainer, for runs beyond one GPU. Docs: docs/trl.md.

    from trl import GRPOConfig
    from trl_credit import CEPOTrainer
    trainer = CEPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[accuracy], args=GRPOConfig(...),
                          train_dataset=dataset, lambda_init=0.5)   # + the method's options, our names and defaults
    trainer.train()                                               # accelerate launch / DeepSpeed / vLLM as usual

Each trainer is TRL's GRPOTrainer with one step changed; generation, rewards, the group
advantages, the PPO loss, data parallelism and vLLM stay TRL's. The credit is our pure functions
(gcpo_token_advantages, cepo_token_advantages, inject_gold), called here, not copied:
  GCPOTrainer, CEPOTrainer  after TRL's _generate_and_score_completions, score the same completion
                            tokens under the other contexts with TRL's own log-prob helper (no grad,
                            the training model) and hand TRL's loss a (B, T) advantage tensor, which
                            it accepts (it unsqueezes only a 1-D one) and splits along rows with the
                            rest of the batch.
  GoldTrainer               inside TRL's _generate, before TRL rewards the completions: the last
                            completion of each all-wrong group becomes the reference solution; TRL
                            then rewards it and computes the advantages and old log-probs as for any
                            row. Use the sequence-level ratio (GRPOConfig(importance_sampling_level=
                            "sequence", loss_type="grpo"), GSPO's epsilon=3e-4, epsilon_high=4e-4).
Dataset columns (TRL passes them through): `prompt` (plain or conversational), `answer` (the final
answer: CEPO's r+, and Gold's check that a reference survives truncation), `solution` (Gold's
reference); rename with answer_column= and solution_column=. A group may span processes: CEPO's r-
and Gold's all-wrong test use the whole group, gathered (the same collectives on every rank).
"""
import copy
import dataclasses

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer
from trl.data_utils import is_conversational
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad

import grpo_baseline as gb
from cepo import CEPOConfig, cepo_token_advantages, hint_ids, lambda_at, wrong_answer_hints
from embedded_task import EMPTY_QUESTION
from gcpo import GCPOConfig, gcpo_token_advantages, resolve_negative_instruction
from gold import GoldConfig, inject_gold, reference_response

# The GRPOTrainer methods these subclasses call or override; tests/test_trl_credit.py pins them.
TRL_METHODS = ("_generate", "_generate_and_score_completions", "_calculate_rewards", "_tokenize_prompts",
               "_get_per_token_logps_and_entropies", "_compute_loss")


class CreditTrainer(GRPOTrainer):
    """GRPOTrainer plus the options our method config (CONFIG) adds to GRPO, same names and defaults.
    TRL's own arguments (temperature, num_generations, max_completion_length, epsilon, ...) keep
    TRL's names and meaning."""
    CONFIG = gb.GRPOConfig
    NOT_HERE = {}  # options of our loop this trainer does not implement: name -> why

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

    def __init__(self, *args, answer_column="answer", solution_column="solution", **kwargs):
        options = {f.name: kwargs.pop(f.name) for f in self.options() if f.name in kwargs}
        self.method_config(**options)  # bad options fail before the model loads
        super().__init__(*args, **kwargs)
        self.answer_column, self.solution_column = answer_column, solution_column
        self.method = self.method_config(num_generations=self.num_generations, temperature=self.temperature,
                                         max_completion_length=self.max_completion_length, **options)  # TRL's sampling

    def column(self, inputs, name, who):
        if name not in inputs[0]:
            raise ValueError(f"{type(self).__name__} needs a dataset column {name!r} ({who}); the batch has "
                             f"{sorted(inputs[0])}: add it, or name yours with {who.split()[0]}_column=")
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


def prompts_of(out, rows):
    """The unpadded prompt token ids of the completions `rows`."""
    return [p[m.bool()].tolist() for p, m in zip(out["prompt_ids"][rows], out["prompt_mask"][rows])]


def negative_messages(prompt, cfg):
    """GCPO's x- in TRL's prompt format (a string, or a list of chat messages): 'wrong_answer'
    appends the negative instruction to the last user turn; 'empty_prompt' replaces it by a
    generic request ('Answer the question.'), keeping any system turn."""
    def edit(text):
        return text + resolve_negative_instruction(cfg) if cfg.negative == "wrong_answer" else EMPTY_QUESTION
    if isinstance(prompt, str):
        return edit(prompt)
    last_user = max(i for i, m in enumerate(prompt) if m["role"] == "user")
    return [dict(m, content=edit(m["content"])) if i == last_user else m for i, m in enumerate(prompt)]


class GCPOTrainer(CreditTrainer):
    """GCPO (gcpo.py) in TRL: token weights from lp+ vs lp- under the negative prompt, (1.1)-(1.5).
    The weights are computed once per generation batch (exact at num_iterations=1; our loop's
    recredit, which recomputes them per mini-batch, is not here)."""
    CONFIG = GCPOConfig
    NOT_HERE = {"entropy_coef": "the reference's term coef * mean(-log pi(y_t)) (it lowers entropy) would change TRL's "
                                "loss and is not here: use gcpo.py for it (GRPOConfig(entropy_coef=) is TRL's entropy "
                                "bonus, the opposite sign)"}

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if not self.model.training:  # TRL's evaluation loss stays GRPO's
            return out
        rows = self.rows_to_score(out["advantages"] != 0)  # A = 0 rows get no credit whatever their weights
        token_adv = torch.zeros_like(out["completion_mask"], dtype=out["advantages"].dtype)
        if len(rows):
            negatives, _, _ = self._tokenize_prompts([negative_messages(inputs[i]["prompt"], self.method) for i in rows.tolist()])
            logp_neg = self.logprobs_under(negatives, out, rows)  # (1.2)
            logp_pos = self.own_logprobs(out, rows)  # (1.1)
            token_adv[rows] = gcpo_token_advantages(out["advantages"][rows], logp_pos, logp_neg, self.loss_mask(out)[rows],
                                                    self.method.weight_norm, self.method.weight_temperature)  # (1.5)
        out["advantages"] = token_adv
        return out


class CEPOTrainer(CreditTrainer):
    """CEPO (cepo.py) in TRL: (2.1)-(2.4), the two teachers being the training model with the
    answer hint r+ (column `answer`) or r- (the group's lowest-reward rejected answer; rejected =
    TRL's total reward < 1) after the templated prompt. λ follows TRL's optimizer step."""
    CONFIG = CEPOConfig

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # all ranks' rows
        return self._rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        lam = lambda_at(self.state.global_step + 1, self.method)  # (2.4)
        if lam == 0 or not self.model.training:  # no teacher pass (the same on every rank); TRL's evaluation stays GRPO's
            return out
        rlsd = self.method.teacher == "rlsd"
        answers = self.column(inputs, self.answer_column, "answer (r+, the final answer)")
        plus = [a or "" for a in answers]
        # r- = r+ where there is no wrong answer (or no answer): Δ = 0, GRPO's credit, as cepo.py
        minus = plus if rlsd else [m if m is not None and a else a for m, a in zip(self.wrong_answers(out), plus)]
        rows = self.rows_to_score((out["advantages"] != 0) & torch.tensor([rlsd or m != a for m, a in zip(minus, plus)],
                                                                          device=out["advantages"].device))
        token_adv = out["advantages"][:, None] * self.loss_mask(out)
        if len(rows):
            prompts = prompts_of(out, rows)
            contexts = [p + hint_ids(self.processing_class, plus[i], self.method) for p, i in zip(prompts, rows.tolist())]
            if not rlsd:
                contexts += [p + hint_ids(self.processing_class, minus[i], self.method) for p, i in zip(prompts, rows.tolist())]
            scored = self.logprobs_under(contexts, out, rows)  # both teachers in one pass
            logp_pos = scored[:len(rows)]
            logp_neg = self.own_logprobs(out, rows) if rlsd else scored[len(rows):]
            token_adv[rows] = cepo_token_advantages(out["advantages"][rows], logp_pos, logp_neg, self.loss_mask(out)[rows],
                                                    lam, self.method.epsilon_w)  # (2.1)-(2.3)
        self._metrics["train"]["cepo/lambda"].append(lam)
        out["advantages"] = token_adv
        return out

    def wrong_answers(self, out):
        """r- of each of this rank's rows: its group's (wrong_answer_hints), over the whole group,
        which may span ranks: the texts are gathered, TRL's rewards already are."""
        texts = gather_object(self.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True))
        total = self.total_reward(self._rewards)
        hints = wrong_answer_hints(texts, total.cpu(), self.num_generations)
        first = self.accelerator.process_index * len(out["completion_ids"])  # this rank's first row in the gathered batch
        return [hints[(first + i) // self.num_generations] for i in range(len(out["completion_ids"]))]


class GoldTrainer(CreditTrainer):
    """Gold (gold.py) in TRL: (3.1) before TRL's rewards; TRL's sequence-level ratio is (3.2)-(3.3)
    without our clamp of the log-ratio at 10. The gold completion is re-rewarded by your reward
    functions (ours forces 1), so a group gains a contrast only if they accept the reference.
    The reward functions run twice on a training batch: once on the sampled completions to find
    the all-wrong groups (its logging discarded), once by TRL on the final ones."""
    CONFIG = GoldConfig
    NOT_HERE = {"max_log_ratio": "TRL's sequence ratio has no clamp of its own"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        level = self.args.importance_sampling_level
        if self.method.ratio_level != level or (level == "sequence" and self.args.loss_type != "grpo"):
            raise ValueError(f"GoldTrainer(ratio_level={self.method.ratio_level!r}) with GRPOConfig(importance_sampling_level="
                             f"{level!r}, loss_type={self.args.loss_type!r}): the paper's sequence ratio needs "
                             "GRPOConfig(importance_sampling_level='sequence', loss_type='grpo') (and GSPO's clip "
                             "epsilon=3e-4, epsilon_high=4e-4); for GRPO's token ratio pass ratio_level='token' and "
                             "importance_sampling_level='token'")

    def _generate_and_score_completions(self, inputs):
        self._inputs = inputs  # _generate sees only the prompts; the rows are needed for their references
        return super()._generate_and_score_completions(inputs)

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
        total = self.total_reward(rewards)
        solutions = self.column(inputs, self.solution_column, "solution (the reference solution)")
        answers = self.column(inputs, self.answer_column, "answer (the final answer)")
        refs = [reference_response(self.processing_class, {"solution": s, "answer": a}, self.method)[0] if a else None
                for s, a in zip(solutions, answers)]
        has_ref = gather(torch.tensor([r is not None for r in refs], device=total.device))
        G, first = self.num_generations, self.accelerator.process_index * len(prompts)
        _, is_gold = inject_gold(total, G, has_ref.view(-1, G)[:, -1])  # (3.1): the last slot of the group
        self._metrics["train"]["gold/injections"].append(int(is_gold.sum()))
        self._metrics["train"]["gold/all_wrong_groups"].append(int((total.view(-1, G).max(1).values <= 0).sum()))
        return is_gold[first:first + len(prompts)].nonzero().squeeze(1).tolist(), refs
