"""LongBench (v1, English tasks): reading its JSONL files, prompts, middle truncation, per-task scoring.

A LongBench file has one JSON object per line with ``input``, ``context``, ``answers`` (list),
``length`` (words), ``dataset``, ``language``, ``all_classes`` and ``_id``; LongBench-E files are the
same with ``_e`` after the data set name. Prompts, generation lengths and metrics follow the public
LongBench code (config/dataset2prompt.json, dataset2maxlen.json, eval.py). The Chinese tasks need a
Chinese word segmenter and are not supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hax_ssm.errors import HaxError, require
from hax_ssm.lm.metrics import LONGBENCH_METRICS

_QA_PASSAGES = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other "
    "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. "
    "Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
_CODE = "Please complete the code given below. \n{context}Next line of code:\n"

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the "
    "question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\n"
    "Story: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single "
    "phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, "
    "using a single phrase or sentence if possible. If the question cannot be answered based on the information "
    'in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or '
    '"unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the '
    "above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot "
    'be answered based on the information in the article, write "unanswerable". If the question is a yes/no '
    'question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\n'
    "Answer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following "
    "question based on the above text, only give me the answer and do not output any other words.\n\n"
    "Question: {input}\nAnswer:",
    "hotpotqa": _QA_PASSAGES,
    "2wikimqa": _QA_PASSAGES,
    "musique": _QA_PASSAGES,
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
    "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the "
    "query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above "
    "meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n"
    "{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n"
    "{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any "
    "other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n"
    "{context}\n\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. "
    "Please carefully read these paragraphs and determine how many unique paragraphs there are after removing "
    "duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease "
    "enter the final count of unique paragraphs after removing duplicates. The output format should only contain "
    "the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine "
    "which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease "
    'enter the number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", '
    '"Paragraph 2", etc.\n\nThe answer is: ',
    "lcc": _CODE,
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}

MAX_NEW_TOKENS = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "lcc": 64,
    "repobench-p": 64,
}

# Few-shot tasks whose generation is cut at its first line before scoring (LongBench eval.py).
FIRST_LINE_ONLY = {"trec", "triviaqa", "samsum"}
LENGTH_BUCKETS = ((0, 4000, "0-4k"), (4000, 8000, "4-8k"), (8000, None, "8k+"))  # LongBench-E, in words


@dataclass(frozen=True)
class LongBenchSample:
    dataset: str
    input: str
    context: str
    answers: list[str]
    length: int
    all_classes: list[str] | None
    id: str

    def prompt(self) -> str:
        return PROMPTS[self.dataset].format(context=self.context, input=self.input)


def dataset_name(name: str) -> str:
    """The LongBench task of a file or ``dataset`` field (LongBench-E names end in ``_e``), checked."""
    base = name[:-2] if name.endswith("_e") else name
    if base not in PROMPTS:
        raise HaxError(f"unknown LongBench data set {name!r}: supported are {', '.join(PROMPTS)}")
    return base


def read_longbench(path: str | Path, datasets: list[str] | None = None) -> list[LongBenchSample]:
    """Samples of a LongBench JSONL file, or of every ``*.jsonl`` in a directory, optionally filtered."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    require(path.exists() and files, f"{path}: no LongBench .jsonl file there")
    wanted = {dataset_name(d) for d in datasets} if datasets else None
    samples = []
    for file in files:
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = dataset_name(row.get("dataset") or file.stem)
                sample = LongBenchSample(
                    dataset=name,
                    input=row["input"],
                    context=row["context"],
                    answers=list(row["answers"]),
                    length=int(row.get("length", 0)),
                    all_classes=row.get("all_classes"),
                    id=str(row.get("_id", f"{file.stem}-{lineno}")),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                if isinstance(err, HaxError):
                    raise
                raise HaxError(f"{file}:{lineno}: not a LongBench record ({type(err).__name__}: {err})") from None
            if wanted is None or name in wanted:
                samples.append(sample)
    return samples


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """LongBench's truncation: over budget, keep the first and the last ``max_tokens // 2`` tokens, since
    the instructions sit at both ends of the prompt."""
    require(max_tokens >= 2, f"prompt budget {max_tokens}: must be at least 2 tokens")
    if len(ids) <= max_tokens:
        return list(ids)
    half = max_tokens // 2
    return list(ids[:half]) + list(ids[-half:])


def score_prediction(dataset: str, prediction: str, answers: list[str], all_classes: list[str] | None) -> float:
    """A sample's score in [0, 1]: the best over its reference answers, as LongBench's eval.py."""
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = LONGBENCH_METRICS[dataset]
    return max((metric(prediction, answer, all_classes=all_classes or []) for answer in answers), default=0.0)


def summarize(records: list[dict]) -> dict:
    """Per data set: score (%), count and LongBench-E length buckets; plus the unweighted average."""
    by_dataset: dict[str, list[dict]] = {}
    for record in records:
        by_dataset.setdefault(record["dataset"], []).append(record)
    datasets = {}
    for name, rows in sorted(by_dataset.items()):
        buckets = {}
        for low, high, label in LENGTH_BUCKETS:
            inside = [r["score"] for r in rows if r["length"] >= low and (high is None or r["length"] < high)]
            if inside:
                buckets[label] = round(100 * float(np.mean(inside)), 2)
        datasets[name] = {
            "score": round(100 * float(np.mean([r["score"] for r in rows])), 2),
            "samples": len(rows),
            "by_length": buckets,
        }
    average = round(float(np.mean([d["score"] for d in datasets.values()])), 2) if datasets else None
    return {"datasets": datasets, "average": average}
