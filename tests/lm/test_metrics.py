import pytest

from hax_ssm.lm import metrics


def test_ruler_string_match():
    assert metrics.string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert metrics.string_match_all("KRMPQ fkyzb", ["krmpq", "FKYZB"]) == 1.0  # case-insensitive
    assert metrics.string_match_part("It was Paris.", ["London", "paris"]) == 1.0
    assert metrics.string_match_part("It was Rome.", ["London", "Paris"]) == 0.0
    assert metrics.ruler_postprocess("  a\x00b\nc  ") == "a\nb\nc"


def test_qa_f1_by_hand():
    # normalised: "cat sat on mat" vs "cat sat": common 2, precision 2/4, recall 2/2 -> F1 = 2/3
    assert metrics.qa_f1_score("The cat sat on the mat.", "a cat sat") == pytest.approx(2 / 3)
    assert metrics.qa_f1_score("Paris", "paris!") == 1.0
    assert metrics.qa_f1_score("London", "Paris") == 0.0
    assert metrics.normalize_answer("The  Quick, brown fox!") == "quick brown fox"


def test_rouge_l_by_hand():
    # LCS of "the cat sat" / "the cat was sat" = 3 tokens: P = 3/3, R = 3/4, F = 6/7
    assert metrics.rouge_l_score("the cat sat", "the cat was sat") == pytest.approx(6 / 7)
    assert metrics.rouge_l_score("", "anything") == 0.0


def test_classification():
    classes = ["Location", "Entity", "Description", "Description and abstract concept"]
    assert metrics.classification_score("Location", "Location", all_classes=classes) == 1.0
    assert metrics.classification_score("Location or Entity", "Entity", all_classes=classes) == 0.5
    # "Description" is inside the true class name: it does not count as a second guess
    assert (
        metrics.classification_score(
            "Description and abstract concept", "Description and abstract concept", all_classes=classes
        )
        == 1.0
    )
    assert metrics.classification_score("no idea", "Entity", all_classes=classes) == 0.0


def test_count_and_retrieval():
    assert metrics.count_score("There are 3 unique paragraphs, not 4.", "3") == 0.5
    assert metrics.count_score("none", "3") == 0.0
    assert metrics.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert metrics.retrieval_score("Paragraph 2 or 12", "Paragraph 12") == 0.5


def test_code_edit_similarity():
    assert metrics.code_sim_score("\n# comment\n    return a - b\nmore", "    return a - b") == 1.0
    # one substitution in 4 characters: Indel ratio = 1 - 2/8 = 0.75
    assert metrics.code_sim_score("abcd", "abce") == pytest.approx(0.75)
