"""Answer extraction from free text: letters, yes/no, open answers, and their edge cases."""

import pytest

from lare.eval.extract import answer_span, extract_choice, extract_yes_no, normalize_answer

PETS = ["a cat", "a dog", "a bird", "a fish"]


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("(c)", "C"), ("C.", "C"), ("**D**", "D"), ("[A]", "A"),
    ("Answer: B", "B"), ("Answer: (d)", "D"), ("answer: c.", "C"),
    ("The answer is B", "B"), ("The answer is B because the dog is brown.", "B"), ("The correct answer is (C).", "C"),
    ("the answer is c.", "C"), ("Option D", "D"), ("The best option is B.", "B"),
    ("Option A is wrong, the answer is C", "C"),  # a statement of the answer outranks a mention of an option
    ("A. The cat", "A"), ("(B) a dog", "B"), ("c) a bird", "C"), ("D: a fish", "D"),
    ("I think B", "B"),  # "I" before a lower-case word is the pronoun
    ("A bird is on the branch, so C", "C"),  # "A" opening a sentence before a lower-case word is the article
    ("The cat is small. A dog would be C", "C"),
    ("It is a dog.", "B"), ("a dog", "B"), ("Dog", "B"),  # the option text, when no letter is given
    ("The reasoning... <|lare_end|> Answer: C<|im_end|>", "C"),
])
def test_extract_choice_reads_letters_and_option_texts(reply, letter):
    assert extract_choice(reply, PETS) == letter


@pytest.mark.parametrize("reply", [
    "B and C",                      # two letters: ambiguous
    "Either A or D",
    "There is a bird and a fish",   # two option texts
    "E",                            # not an option among four
    "The answer is E",
    "I cannot tell",
    "",
    None,
])
def test_extract_choice_refuses_what_is_ambiguous_or_absent(reply):
    assert extract_choice(reply, PETS) is None


def test_article_a_versus_option_a():
    choices = ["a dog", "a cat"]
    assert extract_choice("A. The cat", choices) == "A"          # letter with a delimiter: option A
    assert extract_choice("a cat is there", choices) == "B"      # the article: matched by option text
    assert extract_choice("the answer is a cat", choices) == "B"
    assert extract_choice("A", choices) == "A"


def test_longer_option_wins_over_the_option_it_contains():
    assert extract_choice("It is a black cat.", ["cat", "black cat", "dog"]) == "B"
    assert extract_choice("Three", ["1", "2", "3"]) == "C"  # number words


def test_ten_options_and_unknown_option_texts():
    ten = [""] * 10  # MMMU-Pro vision: options only in the image
    assert extract_choice("I", ten) == "I" and extract_choice("J.", ten) == "J"
    assert extract_choice("The answer is I", ten) == "I"
    assert extract_choice("I think it is H", ten) == "H"
    assert extract_choice("some text", ten) is None


@pytest.mark.parametrize("reply, yn", [
    ("yes", "yes"), ("Yes.", "yes"), ("YES", "yes"), ("Answer: yes, there is", "yes"), ("Answer: Yes", "yes"),
    ("No", "no"), ("No, there is not.", "no"), ("no.", "no"),
    ("There is no dog in the image.", "no"), ("I don't see any", "no"), ("There isn't one.", "no"),
    ("I do not see a dog.", "no"), ("There is none.", "no"),
    ("Yes, but it is not red.", "yes"),         # the first word decides
    ("Yes. No dogs were harmed.", "yes"),       # only the first sentence counts
    ("The answer is yes.", "yes"), ("The answer is no.", "no"),
    ("There is a dog in the image.", None),     # neither: VLMEvalKit's Unknown (LLaVA would read yes)
    ("", None), (None, None), ("Maybe", None),
])
def test_extract_yes_no(reply, yn):
    assert extract_yes_no(reply) == yn


@pytest.mark.parametrize("text, norm", [
    ("Two.", "2"), ("The red square!", "red square"), ("one", "1"), ("  An  Apple ", "apple"), ("top-left", "top left"),
    ("3.5", "3.5"), ("1,000", "1000"), ("twelve", "12"), ("none", "0"), ("Red", "red"),
])
def test_normalize_answer(text, norm):
    assert normalize_answer(text) == norm


def test_answer_span_agrees_with_the_processor():
    from lare.processor import LaReProcessor

    for reply in ["Find the star.\nAnswer: red<|im_end|>", "Answer: 2.", "<|lare_end|>Answer: yes<|im_end|><|endoftext|>",
                  "no marker here", "Answer: A. Answer: B", "answer: Red."]:
        assert answer_span(reply).strip(".") == LaReProcessor.extract_answer(reply)
