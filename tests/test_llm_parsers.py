"""Output parsers on well-formed and malformed completions, and retry-then-count on a real (tiny) model."""

from __future__ import annotations

import random
import string

import pytest

from reasonrec.llm.base import load_llm
from reasonrec.llm.parsers import (
    ParseError,
    ParseStats,
    generate_parsed,
    parse_judgement,
    parse_memory,
    parse_ranking,
    parse_reasoned,
    parse_yes_no,
    split_think,
)

CANDIDATES = {11: "Toy Story (1995)", 12: "Heat (1995)", 13: "Heat and Dust (1983)", 14: "Matrix, The (1999)",
              15: "Fargo (1996)"}


@pytest.mark.parametrize("text,expected", [
    ("Yes", True), ("No", False), ("Yes.", True), ("no.", False), ("  YES, the user will enjoy it", True),
    ("<think>no idea... maybe no</think>\nYes", True), ("Answer: No\nReason: dislikes horror", False),
    ("<Final Verdict>[\"user will like the target book\"]</Final Verdict>", True),
    ("<Final Verdict>user will not like the target movie</Final Verdict>", False),
    ("**Yes** — strong match", True),
])
def test_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text", ["", "   ", "Maybe", "I cannot tell.", "Yes and no", "<think>Yes", "Yesterday",
                                  "Nope", "<Final Verdict></Final Verdict>", "\x00\x01", "No/Yes"])
def test_yes_no_malformed(text):
    with pytest.raises(ParseError):
        parse_yes_no(text)


def test_think_blocks():
    assert split_think("<think>a</think>b") == ("a", "b")
    assert split_think("<think>a</think> x <think>c</think> y") == ("a\nc", "x  y")
    assert split_think("<think>ran out of tokens") == ("ran out of tokens", "")
    assert split_think("opened in the prompt</think>answer") == ("opened in the prompt", "answer")
    assert split_think("plain") == ("", "plain")
    assert split_think("<THINK>A</THINK>B") == ("A", "B")


def test_judgement():
    j = parse_judgement("<Final Judgement>[The user preference is not reasonable]\n<Reflection>[Ignores that the "
                        "user dislikes horror.]</Reflection>")
    assert not j.reasonable and "horror" in j.reflection
    j = parse_judgement("<Final Judgement>The user preference is reasonable</Final Judgement>\n<Reflection>"
                        "</Reflection>")
    assert j.reasonable and j.reflection == ""
    j = parse_judgement("Final Judgement: unreasonable\nReflection: too generic")
    assert not j.reasonable and j.reflection == "too generic"


@pytest.mark.parametrize("text", ["", "It is fine I guess",
                                  "<Final Judgement>[The user preference is not reasonable]",  # no reflection
                                  "<Reflection>only a reflection</Reflection>"])
def test_judgement_malformed(text):
    with pytest.raises(ParseError):
        parse_judgement(text)


def test_reasoned():
    r = parse_reasoned("<User Preference>[Likes classics.]</User Preference>\n<Final Verdict>[\"user will not "
                       "like the target book\"]</Final Verdict>")
    assert r.knowledge == "Likes classics." and r.verdict is False
    r = parse_reasoned("<Refined User Preference>Prefers noir</Refined User Preference><Final Verdict>user will "
                       "like the target movie</Final Verdict>")
    assert r.knowledge == "Prefers noir" and r.verdict is True
    assert parse_reasoned("<Item Fact>A 1996 crime film.</Item Fact>", need_verdict=False).verdict is None
    for bad in ["", "<User Preference></User Preference>", "<User Preference>x</User Preference>"]:
        with pytest.raises(ParseError):
            parse_reasoned(bad)


def test_ranking_maps_titles_back_to_ids():
    text = ("<think>The user likes crime.</think>\n1. Fargo (1996) - crime, like Heat\n2. **The Matrix** - sci-fi\n"
            "3. Heat and Dust - a drama\n4) [Heat] - thriller\n5. Toy Story (1995) - animation")
    r = parse_ranking(text, CANDIDATES)
    assert r.ids == [15, 14, 13, 12, 11] and r.matched == 5 and not r.missing and not r.duplicates
    assert r.explanations[15].startswith("crime")


def test_ranking_handles_missing_duplicates_noise_and_typos():
    text = "Here you go:\n2. Toy Story\n1. Fargo\n3. Fargo (1996) again\n4. Some Other Film\n5. Heet (1995)\nThanks"
    r = parse_ranking(text, CANDIDATES)
    assert r.ids[:3] == [15, 11, 12]  # ordered by the numbers; "Heet" fuzzy-matches Heat
    assert r.duplicates == [15] and r.unmatched_lines == ["Some Other Film"]
    assert r.missing == [13, 14] and sorted(r.ids) == sorted(CANDIDATES)  # every candidate exactly once


@pytest.mark.parametrize("text", ["", "I like all of them.", "1. Nothing relevant\n2. Also nothing", "<think>1. Fargo"])
def test_ranking_malformed(text):
    with pytest.raises(ParseError):
        parse_ranking(text, CANDIDATES)


def test_memory():
    assert parse_memory("<think>x</think>\nUpdated User description: Loves 90s crime films.") == \
        "Loves 90s crime films."
    assert parse_memory("**Updated User Description:** [Likes jazz.]") == "Likes jazz."
    assert parse_memory("Updated User description: old\nUpdated User description: new") == "new"
    for bad in ["", "User description: x", "Updated User description:   ", "<think>Updated User description: x"]:
        with pytest.raises(ParseError):
            parse_memory(bad)


def test_parsers_never_raise_anything_but_parse_errors():
    rng = random.Random(0)
    alphabet = string.printable + "<>[]*#éü—"
    pieces = ["<think>", "</think>", "Yes", "No", "1.", "2)", "Fargo", "Updated User description:", "<Reflection>",
              "<Final Judgement>", "reasonable", "\n", "[", "]"]
    for _ in range(400):
        text = "".join(rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet)
                       for _ in range(rng.randint(0, 80)))
        for parser in (parse_yes_no, parse_judgement, parse_memory, parse_reasoned,
                       lambda t: parse_ranking(t, CANDIDATES)):
            try:
                parser(text)
            except ParseError:
                pass


def test_generate_parsed_retries_then_counts_failures(tiny_model_path):
    llm = load_llm(str(tiny_model_path), batch_size=4, threads=1)
    prompts = ["Answer Yes or No: do you like jazz?", "Answer Yes or No: is it raining?"]
    stats = ParseStats()
    # The random tiny model never writes Yes/No: every prompt is tried 3 times, then recorded as a failure.
    out = generate_parsed(llm, prompts, parse_yes_no, max_attempts=3, stats=stats, max_new_tokens=4)
    assert [r.ok for r in out] == [False, False] and [r.attempts for r in out] == [3, 3]
    assert all(r.error and r.value is None for r in out)
    assert stats.as_dict() == {"parse/total": 2, "parse/ok": 0, "parse/retried": 2, "parse/failures": 2}
    # A parser that fails once per prompt: the retry (a new sampled text) succeeds.
    calls = []

    def flaky(text):
        calls.append(text)
        if len(calls) <= 2:  # the first attempt of both prompts
            raise ParseError("first try")
        return len(text)

    out = generate_parsed(llm, prompts, flaky, max_attempts=3, stats=stats, max_new_tokens=4)
    assert all(r.ok for r in out) and [r.attempts for r in out] == [2, 2]
    assert stats.failures == 2 and stats.ok == 2
