"""TOFU's table for one model version of a store: the served mixture's answer losses and greedy
answers, turned into TOFU's measures (sisa/tofu/metrics.py).

Nothing here scores or decodes on its own: the answer losses are `serving.score_records` (the
served mixture, every shard weighed by the posterior the question gives it), the greedy answers
`serving.generate_many`, both on the question rendered with the base model's chat template as
the records were trained (user = question, assistant = answer). An answer's loss is the mean NLL
of its assistant tokens (content and the template's end-of-turn marker), as open-unlearning
labels everything after the generation prompt. Two differences from their pipeline, both about
the template: they append an eos when the rendered chat does not end in one (SmolLM2's ends in
"<|im_end|>\n", so they would score one more "<|im_end|>"; Llama-3's ends in its eos, so
nothing is added there), and they pass their model config's system prompt where sisa renders the
conversation as it was trained (a template's own default system turn, if it has one).

What can be cut on a small machine, and says so in the result: the number of questions of each
utility set (`questions`, spread evenly over each file: the retain file holds 20 questions per
author in order, so its first 10 would all be one author's), and the generation length
(`max_new_tokens`, open-unlearning's default is 200).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sisa import serving
from sisa.data.formats import CHAT, Example
from sisa.storage.errors import ValidationError
from sisa.tofu import metrics, splits

GENERATION_TOKENS = 200  # open-unlearning/configs/generation/default.yaml: greedy, 200 new tokens
MAX_LENGTH = 512  # open-unlearning's QADataset max_length: no TOFU record comes near it


@dataclass(frozen=True)
class TofuSettings:
    max_new_tokens: int = GENERATION_TOKENS
    questions: int | None = None  # per utility set (retain, real authors, world facts); None = all
    max_length: int = MAX_LENGTH
    batch_size: int = 16
    # torch threads while scoring and decoding: 1 on a shared machine (serving.one_thread says
    # why); every core when the evaluation has the machine to itself. Not a cut: the measures
    # are the same, up to the last float bits of a sum.
    threads: int = 1

    def cuts(self) -> list[str]:
        """What this run measures short of open-unlearning's full evaluation, in words."""
        out = []
        if self.max_new_tokens != GENERATION_TOKENS:
            out.append(f"greedy answers of at most {self.max_new_tokens} tokens (theirs: {GENERATION_TOKENS})")
        if self.questions is not None:
            out.append(f"{self.questions} questions of each utility set, spread evenly (theirs: 400 / 100 / 117)")
        return out


@dataclass(frozen=True)
class TofuSets:
    """The question sets of one evaluation: the forget set (rows of forget10_perturbed of the
    forget authors), and model utility's retain set, real authors and world facts."""

    forget: list[dict]
    retain: list[dict]
    real_authors: list[dict]
    world_facts: list[dict]
    forget_authors: list[int] = field(default_factory=list)


def load_sets(
    forget_authors: list[int],
    questions: int | None = None,
    source: str | None = None,
    retain_authors: Collection[int] | None = None,
) -> TofuSets:
    """The sets for forgetting `forget_authors` (any of TOFU's authors 180-199, the ones with
    paraphrased and perturbed answers: forget10's), from the shipped copy or `source`. With
    `questions`, that many of each utility set, evenly spread over it (`spread`); with
    `retain_authors` (a subset's trained authors), the retain set's questions are theirs only."""
    perturbed = splits.read_config("forget10_perturbed", source)
    have = sorted({int(r["author"]) for r in perturbed})
    outside = sorted(set(forget_authors) - set(have))
    if not forget_authors or outside:
        raise ValidationError(
            f"the forget authors should be TOFU authors with perturbed answers ({have[0]}-{have[-1]}); "
            f"got {sorted(forget_authors) or 'none'}{f', not these: {outside}' if outside else ''}"
        )
    retain = splits.read_config("retain_perturbed", source)
    if retain_authors is not None:
        retain = [r for r in retain if int(r["author"]) in set(retain_authors)]
        if not retain:
            raise ValidationError("none of the retain authors has a question in TOFU's retain set (authors 0-19)")
    return TofuSets(
        forget=[r for r in perturbed if int(r["author"]) in set(forget_authors)],
        retain=spread(retain, questions),
        real_authors=spread(splits.read_config("real_authors_perturbed", source), questions),
        world_facts=spread(splits.read_config("world_facts_perturbed", source), questions),
        forget_authors=sorted(forget_authors),
    )


def spread(rows: list[dict], k: int | None) -> list[dict]:
    """`k` rows evenly spaced over `rows`, in order, the first one included (all when k is None
    or not fewer): rows i * n / k."""
    n = len(rows)
    return list(rows) if k is None or k >= n else [rows[i * n // k] for i in range(k)]


def _chat(question: str, answer: str) -> Example:
    return Example(CHAT, messages=(("user", question), ("assistant", answer)))


def answer_losses(ens: serving.Ensemble, pairs: list[tuple[str, str]], settings: TofuSettings) -> list[float]:
    """Per (question, answer): the served mixture's mean NLL of the answer's tokens."""
    texts = [_chat(q, a) for q, a in pairs]
    served, _ = serving.score_records(ens, texts, None, settings.max_length, settings.batch_size)
    return served


def _losses(ens: serving.Ensemble, rows: list[dict], key: str, settings: TofuSettings) -> list[list[float]]:
    """avg_loss of each row's answer(s) under `key`: one list per row (a perturbed set has 3-5)."""
    answers = [r[key] if isinstance(r[key], list) else [r[key]] for r in rows]
    flat = answer_losses(ens, [(r["question"], a) for r, ans in zip(rows, answers, strict=True) for a in ans], settings)
    out, at = [], 0
    for ans in answers:
        out.append(flat[at : at + len(ans)])
        at += len(ans)
    return out


def greedy_answers(ens: serving.Ensemble, questions: list[str], settings: TofuSettings) -> list[str]:
    """The served mixture's greedy answer to each question, cleaned as open-unlearning cleans it."""
    prompts = [serving.chat_prompt(ens, [("user", q)]) for q in questions]
    out: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        out += serving.generate_many(ens, chunk, [settings.max_new_tokens] * len(chunk), add_special_tokens=False)
    eos = ens.tokenizer.decode([ens.tokenizer.eos_token_id]) if ens.tokenizer.eos_token_id is not None else ""
    return [metrics.clean_generation(t, eos) for t in out]


def _perturbed_set(ens, rows: list[dict], correct_key: str, settings: TofuSettings) -> dict[str, Any]:
    """Probability of the answers, and truth ratios against `correct_key` (the paraphrase for
    the TOFU authors, the answer itself for real authors and world facts)."""
    answer = [x[0] for x in _losses(ens, rows, "answer", settings)]
    correct = answer if correct_key == "answer" else [x[0] for x in _losses(ens, rows, correct_key, settings)]
    wrong = _losses(ens, rows, "perturbed_answer", settings)
    return {"answer": answer, "correct": correct, "wrong": wrong}


def _utility_set(ens, rows: list[dict], prefix: str, settings: TofuSettings) -> dict[str, float]:
    own = prefix == "retain"
    losses = _perturbed_set(ens, rows, "paraphrased_answer" if own else "answer", settings)
    prob = (
        metrics.probability(losses["answer"])
        if own
        else metrics.normalised_probability(losses["answer"], losses["wrong"])
    )
    rouge = metrics.rouge_l_recall(
        greedy_answers(ens, [r["question"] for r in rows], settings), [r["answer"] for r in rows]
    )
    ratios = metrics.truth_ratios(losses["correct"], losses["wrong"])
    return {
        f"{prefix}_Q_A_Prob" + ("" if own else "_normalised"): prob,
        f"{prefix}_Q_A_ROUGE": sum(rouge) / len(rouge),
        f"{prefix}_Truth_Ratio": metrics.truth_ratio_score(ratios, "true_better"),
    }


@dataclass
class TofuScores:
    """TOFU's table for one version: model utility and its 9 parts, the forget set's truth-ratio
    score, probability and ROUGE-L, and its per-question truth ratios (forget quality's sample)."""

    model_version: int | None
    model_utility: float
    utility_parts: dict[str, float]
    forget_truth_ratio: float
    forget_Q_A_Prob: float
    forget_Q_A_ROUGE: float
    forget_truth_ratios: list[float]
    forget_authors: list[int]
    questions: dict[str, int]
    cuts: list[str]
    # per forget question, in the order of forget_truth_ratios: its author, answer loss, ROUGE-L
    forget_question_authors: list[int] = field(default_factory=list)
    forget_answer_losses: list[float] = field(default_factory=list)
    forget_rouge: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def restrict(self, authors: list[int]) -> TofuScores:
        """The same version's scores on a smaller forget set (some of its authors): the forget
        measures recomputed over their questions, model utility unchanged."""
        keep = [i for i, a in enumerate(self.forget_question_authors) if a in set(authors)]
        missing = sorted(set(authors) - set(self.forget_question_authors))
        if missing or not keep:
            raise ValidationError(f"authors {missing or authors} are not in this forget set {self.forget_authors}")
        ratios = [self.forget_truth_ratios[i] for i in keep]
        rouge = [self.forget_rouge[i] for i in keep]
        return replace(
            self,
            forget_truth_ratio=metrics.truth_ratio_score(ratios, "closer_to_1_better"),
            forget_Q_A_Prob=metrics.probability([self.forget_answer_losses[i] for i in keep]),
            forget_Q_A_ROUGE=sum(rouge) / len(rouge),
            forget_truth_ratios=ratios,
            forget_authors=sorted(authors),
            questions=self.questions | {"forget": len(keep)},
            forget_question_authors=[self.forget_question_authors[i] for i in keep],
            forget_answer_losses=[self.forget_answer_losses[i] for i in keep],
            forget_rouge=rouge,
        )


def evaluate_ensemble(
    ens: serving.Ensemble, sets: TofuSets, settings: TofuSettings, model_version: int | None = None
) -> TofuScores:
    """Every TOFU measure of one served model but forget quality (which needs a reference)."""
    with serving.torch_threads(settings.threads):
        parts: dict[str, float] = {}
        for prefix, rows in (("retain", sets.retain), ("ra", sets.real_authors), ("wf", sets.world_facts)):
            parts |= _utility_set(ens, rows, prefix, settings)
        forget = _perturbed_set(ens, sets.forget, "paraphrased_answer", settings)
        answers = greedy_answers(ens, [r["question"] for r in sets.forget], settings)
    ratios = metrics.truth_ratios(forget["correct"], forget["wrong"])
    rouge = metrics.rouge_l_recall(answers, [r["answer"] for r in sets.forget])
    return TofuScores(
        model_version=model_version,
        model_utility=metrics.model_utility(parts),
        utility_parts={p: parts[p] for p in metrics.UTILITY_PARTS},
        forget_truth_ratio=metrics.truth_ratio_score(ratios, "closer_to_1_better"),
        forget_Q_A_Prob=metrics.probability(forget["answer"]),
        forget_Q_A_ROUGE=sum(rouge) / len(rouge),
        forget_truth_ratios=[float(x) for x in ratios],
        forget_authors=list(sets.forget_authors),
        questions={
            "forget": len(sets.forget),
            "retain": len(sets.retain),
            "real_authors": len(sets.real_authors),
            "world_facts": len(sets.world_facts),
        },
        cuts=settings.cuts(),
        forget_question_authors=[int(r["author"]) for r in sets.forget],
        forget_answer_losses=list(forget["answer"]),
        forget_rouge=rouge,
    )


def forget_quality(scores: TofuScores, reference: TofuScores) -> float:
    """TOFU's forget quality of `scores` against a retain model's scores on the same forget set."""
    if scores.forget_authors != reference.forget_authors:
        raise ValidationError(
            f"forget quality compares the same forget set: authors {scores.forget_authors} vs "
            f"the reference's {reference.forget_authors}"
        )
    return metrics.forget_quality(scores.forget_truth_ratios, reference.forget_truth_ratios)
