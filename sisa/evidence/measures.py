"""What a version knows, measured while the text is in memory and kept only as numbers.

For each version a request creates (before, relief, approximate or isolate, exact):

- reliability, on the request's own records (prompt → answer): how often greedy decoding
  produces the forgotten (or, for a rectification, the old) answer, `forbidden_recall`, and that
  answer's token loss; for a rectification also the new answer's, `expected_recall` and loss;
- generalization: the same on the `paraphrase` and `related` probes;
- locality, on the `locality` probes: the fraction of answer tokens whose greedy (teacher-forced)
  prediction is unchanged from the version before, and how often the fact is still recalled;
- leak@k: of k completions sampled at temperature 1 with seeds 0..k-1, how many contain the
  forbidden answer, over the records and the generalization probes (k: `evidence.leak_k`);
- membership inference: the Min-k% probability score (k = 40%: the mean log-probability of the
  40% least likely tokens of a text; Shi et al. 2024) of the records against a holdout no model
  saw, as a ROC AUC (0.5: the records look like strangers), and the plain loss attack's (the mean
  log-probability of every token), each with its seeded bootstrap 95% interval
  (sisa/evidence/statistics.py); one batched forward per chunk of texts scores both. And MUSE's
  privacy leak relative to the exact version, the one model known never to have seen them:
  privleak = (AUC_version - AUC_exact) / AUC_exact * 100 (Shi et al. 2024, "MUSE").

A match is a containment of the normalised answer (case, surrounding space and final period
ignored) in the normalised completion. Sample sizes travel with every number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from sisa.data.formats import CHAT, Example
from sisa.evidence.probes import Probe, for_request
from sisa.evidence.statistics import BOOTSTRAP_RESAMPLES, auc, auc_interval
from sisa.model import mixture as aggregate
from sisa.model.chat import render_chat
from sisa.serving import engine as serving

MIN_K = 0.4
LEAK_K = 10  # the default of `evidence.leak_k`


Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Question:
    """A prompt, the answer that should come out (or None) and the one that must not (or None).
    `turns` set: the question is a conversation (the turns before the assistant's reply), asked
    through the base model's chat template, as a chat model is served; `prompt` is then only its
    plain-text reading."""

    prompt: str
    expected: str | None = None
    forbidden: str | None = None
    turns: Turns | None = None


@dataclass
class Targets:
    """Everything measured, in memory only."""

    records: list[Question] = field(default_factory=list)
    general: list[Question] = field(default_factory=list)
    locality: list[Question] = field(default_factory=list)
    members: list[str | Turns] = field(default_factory=list)  # the records' text, or a chat record's turns (MIA)
    holdout: list[str | Turns] = field(default_factory=list)  # what no model saw, read the same way (MIA)
    leak_k: int = LEAK_K

    def __bool__(self) -> bool:
        return bool(self.records or self.general or self.locality or (self.members and self.holdout))


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".").strip()


def answer_of(text: str, prompt: str | None) -> str | None:
    return text[len(prompt) :] if prompt and text.startswith(prompt) and normalise(text[len(prompt) :]) else None


def as_text(item, prompt: str | None) -> tuple[str, str | None]:
    """(text, prompt) of a record as these measures read it: a text record as it is; a
    prompt-completion record as its prompt followed by its completion; a chat record as its
    turns, one `role: content` line each, the last assistant turn the answer. Members and holdout
    are read the same way, so the membership score compares like with like."""
    if isinstance(item, str):
        return item, prompt
    if item.format == CHAT:
        turns = list(item.messages)
        last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=len(turns) - 1)
        head = "".join(f"{role}: {content}\n" for role, content in turns[:last]) + "assistant: "
        return head + turns[last][1], head
    return item.prompt + item.completion, item.prompt


def _turns(item) -> Turns | None:
    return tuple(item.messages) if not isinstance(item, str) and item.format == CHAT else None


def _before_reply(turns: Turns | None) -> Turns | None:
    """A conversation's turns before its last assistant reply: what the reply answers."""
    if turns is None:
        return None
    last = max((j for j, (role, _) in enumerate(turns) if role == "assistant"), default=len(turns))
    return turns[:last]


def _corrected(answer: str, old_to_new: dict[str, str]) -> str | None:
    """The new answer of the correction a probe's answer belongs to: the same answer, or one
    contained in a corrected record's old answer that its new answer lacks (a chat reply
    "Ada Lane works as a pilot." holds a probe's " pilot.")."""
    key = normalise(answer)
    if key in old_to_new:
        return old_to_new[key]
    for old, new in old_to_new.items():
        if key and key in old and key not in normalise(new):
            return new
    return None


def build_targets(
    texts: list,
    prompts: list[str | None] | None,
    probes: list[Probe],
    subjects: set[str],
    holdout: list | None = None,
    new: list[tuple[Any, str | None]] | None = None,
    with_trio: bool = True,
    leak_k: int = LEAK_K,
) -> Targets:
    """The questions of a request: its records (`texts`, `prompts`; for a rectification `new`
    holds each record's new (content, prompt) in the same order: a text or, for a structured
    record, its Example), the probes that count for its
    `subjects`, and the holdout; `leak_k` completions are sampled per forbidden answer.

    When the records are chat, the model was trained on conversations: a record is asked as its
    turns up to the last assistant reply, a probe's prompt as the user's turn, both through the
    chat template, and the membership score reads members and holdout as rendered conversations."""
    prompts = prompts or [None] * len(texts)
    turns = [_turns(x) for x in texts]
    chat = any(t is not None for t in turns)
    texts, prompts = (
        map(list, zip(*(as_text(x, p) for x, p in zip(texts, prompts, strict=True)), strict=True))
        if texts
        else ([], [])
    )
    members = [tt if tt is not None else x for x, tt in zip(texts, turns, strict=True)]
    held = [(_turns(h) or as_text(h, None)[0]) for h in holdout] if holdout else holdout
    t = Targets(members=members if holdout else [], holdout=list(held or []), leak_k=leak_k)
    if not with_trio:
        return t

    def asked(prompt: str) -> Turns | None:
        return (("user", prompt.strip()),) if chat else None

    old_to_new: dict[str, str] = {}
    for i, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
        old = answer_of(text, prompt)
        if new is None:
            if old:
                t.records.append(Question(prompt, None, old, _before_reply(turns[i])))
            continue
        new_item, new_prompt = new[i]
        new_turns = _turns(new_item)
        if not isinstance(new_item, str):  # a structured correction: read as the record is
            new_text, new_prompt = as_text(new_item, None)
        else:
            new_text, new_prompt = new_item, new_prompt or prompt
        fresh = answer_of(new_text, new_prompt)
        if new_prompt and (old or fresh):
            t.records.append(
                Question(new_prompt, fresh, old, _before_reply(new_turns if new_turns is not None else turns[i]))
            )
        if old and fresh:
            old_to_new[normalise(old)] = fresh
    general, local = for_request(probes, subjects)
    for p in general:
        if new is None:
            t.general.append(Question(p.prompt, None, p.answer, asked(p.prompt)))
        elif (fresh := _corrected(p.answer, old_to_new)) is not None:
            t.general.append(Question(p.prompt, fresh, p.answer, asked(p.prompt)))
        else:
            t.general.append(Question(p.prompt, p.answer, p.old_answer, asked(p.prompt)))
    t.locality = [Question(p.prompt, p.answer, None, asked(p.prompt)) for p in local]
    return t


# -- measuring one version ---------------------------------------------------------------------
# Token-by-token decoding and the membership forwards of small batches run on one thread (see
# sisa/serving/engine.py: under load a 2-thread matmul spun in OpenMP waiting for its second thread).
one_thread = serving.one_thread


def measure(
    ens: serving.Ensemble, targets: Targets, max_length: int, before: list[list[int]] | None = None
) -> tuple[dict[str, Any], list[list[int]]]:
    """The numbers of one version, and its locality predictions (token ids, kept in memory to
    compare the next version with; never stored)."""
    with one_thread():
        return _measure(ens, targets, max_length, before)


def _measure(
    ens: serving.Ensemble, targets: Targets, max_length: int, before: list[list[int]] | None
) -> tuple[dict[str, Any], list[list[int]]]:
    out: dict[str, Any] = {}
    if targets.records:
        out["reliability"] = _recall_block(ens, targets.records, max_length)
    if targets.general:
        out["generalization"] = _recall_block(ens, targets.general, max_length)
    preds: list[list[int]] = []
    if targets.locality:
        preds = [_answer_predictions(ens, q, q.expected or "", max_length) for q in targets.locality]
        expected = [q.expected or "" for q in targets.locality]
        hits = [
            _contains(c, q.expected)
            for c, q in zip(_greedy_all(ens, targets.locality, expected), targets.locality, strict=True)
        ]
        block: dict[str, Any] = {
            "n": len(preds),
            "recall": sum(hits) / len(hits),
            "answer_tokens": sum(len(p) for p in preds),
        }
        if before is not None and len(before) == len(preds):
            same = sum(int(a == b) for x, y in zip(before, preds, strict=True) for a, b in zip(x, y, strict=False))
            block["unchanged_tokens"] = same / max(1, sum(len(p) for p in preds))
        out["locality"] = block
    leaky = [q for q in targets.records + targets.general if q.forbidden]
    if leaky and targets.leak_k:
        counts = _leaks_all(ens, leaky, targets.leak_k)
        out["leak_at_k"] = {
            "k": targets.leak_k,
            "prompts": len(counts),
            "samples": len(counts) * targets.leak_k,
            "samples_with_answer": sum(counts),
            "prompts_with_any": sum(1 for c in counts if c),
        }
    if targets.members and targets.holdout:
        out["membership"] = membership(ens, targets.members, targets.holdout, max_length)
    cut = _longer_than(ens, targets, max_length)
    if cut:  # never silent: texts longer than the model reads were scored on their first max_length tokens
        out["cut_texts"] = {"max_length": max_length, "n": cut}
    return out, preds


def _longer_than(ens: serving.Ensemble, targets: Targets, max_length: int) -> int:
    """How many of the texts the measures score hold more than `max_length` tokens."""
    texts = [*targets.members, *targets.holdout] if targets.members and targets.holdout else []
    asked = [q.prompt + (q.expected or q.forbidden or "") for q in targets.records + targets.general if q.turns is None]
    return sum(len(_full_ids(ens, t)) > max_length for t in texts) + sum(
        len(_tokens(ens, t)) > max_length for t in asked
    )


def _interval(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [pair[0], pair[1]]


def membership(
    ens: serving.Ensemble, members: list[str | Turns], holdout: list[str | Turns], max_length: int
) -> dict[str, Any]:
    """The Min-k% and the plain loss attack of the members against the holdout: each AUC with its
    bootstrap 95% interval (`auc_ci95`, `loss_auc_ci95`) and the sample sizes."""
    m_min_k, m_mean = membership_scores(ens, members, max_length)
    h_min_k, h_mean = membership_scores(ens, holdout, max_length)
    return {
        "min_k_percent": int(MIN_K * 100),
        "auc": auc(m_min_k, h_min_k),
        "auc_ci95": _interval(auc_interval(m_min_k, h_min_k)),
        "loss_auc": auc(m_mean, h_mean),
        "loss_auc_ci95": _interval(auc_interval(m_mean, h_mean)),
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "members": len(m_min_k),
        "holdout": len(h_min_k),
    }


def _recall_block(ens: serving.Ensemble, questions: list[Question], max_length: int) -> dict[str, Any]:
    block: dict[str, Any] = {"n": len(questions)}
    for key in ("forbidden", "expected"):
        qs = [q for q in questions if getattr(q, key)]
        if not qs:
            continue
        answers = [getattr(q, key) for q in qs]
        hits = [_contains(c, a) for c, a in zip(_greedy_all(ens, qs, answers), answers, strict=True)]
        items = [
            Example(CHAT, messages=(*q.turns, ("assistant", a.strip()))) if q.turns is not None else q.prompt + a
            for q, a in zip(qs, answers, strict=True)
        ]
        losses, _ = serving.score_records(
            ens, items, [None if q.turns is not None else q.prompt for q in qs], max_length
        )
        block[f"{key}_n"] = len(qs)
        block[f"{key}_recall"] = sum(hits) / len(hits)
        block[f"{key}_answer_loss"] = serving.mean(losses)
    return block


def _tokens(ens: serving.Ensemble, text: str, special: bool = True) -> list[int]:
    return ens.tokenizer(text, add_special_tokens=special)["input_ids"]


# A chat reply restates the question's subject before the answer ("Ada Lane works as a ..."):
# the tokens a reply may take beyond the answer's own.
CHAT_REPLY_EXTRA = 24


def _asked(ens: serving.Ensemble, q: Question) -> tuple[str, bool, int]:
    """(the prompt as the model reads it, whether the tokenizer adds its special tokens, tokens
    the reply may take beyond the answer). A rendered template carries its own special tokens."""
    if q.turns is None:
        return q.prompt, True, 4
    return serving.chat_prompt(ens, list(q.turns)), False, CHAT_REPLY_EXTRA


def _greedy_all(ens: serving.Ensemble, qs: list[Question], answers: list[str]) -> list[str]:
    """Each question's greedy reply, decoded only as far as its answer needs, every question of
    a kind (plain prompts, rendered chat templates) decoded together in one running batch."""
    asked = [_asked(ens, q) for q in qs]
    out: list[str] = [""] * len(qs)
    for special in (True, False):
        idx = [i for i, (_, s, _) in enumerate(asked) if s is special]
        if not idx:
            continue
        lengths = [len(_tokens(ens, answers[i], special)) + asked[i][2] for i in idx]
        texts = serving.generate_many(ens, [asked[i][0] for i in idx], lengths, add_special_tokens=special)
        for i, text in zip(idx, texts, strict=True):
            out[i] = text
    return out


def _leaks_all(ens: serving.Ensemble, qs: list[Question], k: int) -> list[int]:
    """Per question, how many of its k samples (seeds 0..k-1, temperature 1) hold the forbidden
    answer; every question's samples of a kind (plain prompts, chat templates) decoded together."""
    asked = [_asked(ens, q) for q in qs]
    counts = [0] * len(qs)
    for special in (True, False):
        idx = [i for i, (_, s, _) in enumerate(asked) if s is special]
        if not idx:
            continue
        lengths = [len(_tokens(ens, qs[i].forbidden or "", special)) + asked[i][2] for i in idx]
        samples = serving.sample_many(ens, [asked[i][0] for i in idx], list(range(k)), lengths, 1.0, special)
        for i, texts in zip(idx, samples, strict=True):
            counts[i] = sum(_contains(c, qs[i].forbidden) for c in texts)
    return counts


def _contains(completion: str, answer: str | None) -> bool:
    return bool(answer) and normalise(answer) in normalise(completion)


@torch.no_grad()
def _served_logprobs(ens: serving.Ensemble, ids: list[int]) -> torch.Tensor:
    device = next(ens.model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    return aggregate.ensemble_logprobs(
        ens.model, ens.adapter_names(), x, torch.ones_like(x), ens.aggregation, ens.log_prior()
    )[0]


def _answer_predictions(ens: serving.Ensemble, q: Question, answer: str, max_length: int) -> list[int]:
    """The served argmax at each answer position, teacher-forced on the answer (for a chat
    question, the answer as the start of the assistant's reply)."""
    prompt, special, _ = _asked(ens, q)
    if q.turns is not None:
        answer = answer.strip()
    n = len(_tokens(ens, prompt, special))
    ids = _tokens(ens, prompt + answer, special)[:max_length]
    if len(ids) <= n:
        return []
    return _served_logprobs(ens, ids)[n - 1 : len(ids) - 1].argmax(-1).tolist()


def _score_ids(ens: serving.Ensemble, text: str | Turns, max_length: int) -> list[int]:
    return _full_ids(ens, text)[:max_length]


def _full_ids(ens: serving.Ensemble, text: str | Turns) -> list[int]:
    if isinstance(text, str):
        return _tokens(ens, text)
    return _tokens(ens, render_chat(ens.tokenizer, list(text))[0], False)


@torch.no_grad()
def membership_scores(
    ens: serving.Ensemble, texts: list[str | Turns], max_length: int, k: float = MIN_K, batch_size: int = 16
) -> tuple[list[float], list[float]]:
    """(Min-k% score, mean log-probability) of each text under the served mixture, higher: more
    member-like. Min-k% is the mean log-probability of the k fraction of least likely tokens; a
    conversation (turns) is read as the chat template renders it. Texts are scored in right-padded
    batches of `batch_size`, one forward each (a pad is never context of a real token)."""
    rows = [_score_ids(ens, t, max_length) for t in texts]
    device = next(ens.model.parameters()).device
    pad = ens.tokenizer.pad_token_id if ens.tokenizer.pad_token_id is not None else 0
    min_k: list[float] = []
    mean: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, r in enumerate(chunk):
            x[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        nxt = aggregate.served_token_logprobs(
            ens.model, ens.adapter_names(), x.to(device), mask.to(device), ens.aggregation, ens.log_prior(), ens.cache
        )
        for i, r in enumerate(chunk):
            if len(r) < 2:
                min_k.append(0.0)
                mean.append(0.0)
                continue
            tok = nxt[i, : len(r) - 1]
            low = torch.sort(tok).values[: max(1, math.ceil(k * len(tok)))]
            min_k.append(float(low.mean()))
            mean.append(float(tok.mean()))
    return min_k, mean


def min_k_score(ens: serving.Ensemble, text: str | Turns, max_length: int, k: float = MIN_K) -> float:
    """The Min-k% score of one text (`membership_scores` of a batch of one)."""
    return membership_scores(ens, [text], max_length, k)[0][0]


# -- pure statistics ---------------------------------------------------------------------------
def privleak(auc_version: float | None, auc_exact: float | None) -> float | None:
    """MUSE's privacy leak of a version relative to the exact (retrained) one, in percent: positive
    when the records look more like members than under a model that never saw them
    (under-unlearning), negative when less (over-unlearning); 0 for the exact version itself."""
    if auc_version is None or not auc_exact:
        return None
    return (auc_version - auc_exact) / auc_exact * 100.0


def add_privleak(by_version: dict[str, dict[str, Any]]) -> None:
    """Once the exact version is measured: every version's privleak relative to it."""
    exact = by_version.get("exact", {}).get("membership", {}).get("auc")
    for numbers in by_version.values():
        m = numbers.get("membership")
        if m is not None:
            m["privleak_vs_exact"] = privleak(m.get("auc"), exact)
