"""The numpy sampler implements the same arithmetic as transformers' processors."""

from __future__ import annotations

import numpy as np
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from huatuo_cli.engine.llm import Sampling, apply_repetition_penalty, choose_token


def test_repetition_penalty_matches_transformers():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    previous = [3, 7, 7, 12, 40]
    expected = RepetitionPenaltyLogitsProcessor(1.2)(torch.tensor([previous]), torch.tensor(logits[None]))[0].numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, previous, 1.2), expected, rtol=1e-6)


def test_greedy_picks_argmax_after_penalty():
    logits = np.array([1.0, 5.0, 4.9, -2.0])
    assert choose_token(logits, [], Sampling(repetition_penalty=1.0), np.random.default_rng(0)) == 1
    # 5.0 / 1.2 < 4.9: the repeated token loses
    assert choose_token(logits, [1], Sampling(repetition_penalty=1.2), np.random.default_rng(0)) == 2


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    s = Sampling(temperature=1.0, top_p=0.8, repetition_penalty=1.0)
    rng = np.random.default_rng(1)
    draws = {choose_token(logits, [], s, rng) for _ in range(300)}
    assert draws == {0, 1}


def test_stop_prefix_is_held_back_while_streaming():
    from huatuo_cli.engine.llm import _pending_stop_prefix

    stops = ("<|user|>",)
    assert _pending_stop_prefix("effusion <|us", stops) == len("<|us")
    assert _pending_stop_prefix("effusion <", stops) == 1
    assert _pending_stop_prefix("effusion.", stops) == 0
