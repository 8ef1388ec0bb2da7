"""RULER-style synthetic long-context tasks, generated on local text at any length in tokens.

Re-derived from NVIDIA/RULER (scripts/data/synthetic/*.py, constants.py, synthetic.yaml): the same
task family, templates, answer prefixes, generation budgets and scoring (string_match_all for needles,
variable tracking and word extraction, string_match_part for QA). What differs, because RULER's data
cannot be fetched here:

- the "essay" haystack (Paul Graham essays) is replaced by held-out books of the local corpus;
- QA uses cloze questions over paragraphs of the local Wikipedia articles instead of SQuAD/HotpotQA:
  a sentence of the gold paragraph is shown with one name, number or phrase blanked out, and the answer
  is that span, which therefore occurs in the context by construction;
- sentences are split by a regular expression instead of NLTK's punkt (whose model must be downloaded);
- the common-words task extends wonderwords' lists with adjective-noun pairs instead of RULER's
  separate English word list when a long context needs more distinct words.

Every sample records its task, length (prompt tokens + generation budget, RULER's convention) and, for
needle and QA tasks, the depth (percent of the context) of the needles or gold paragraph holding the
answer. Generation is deterministic in (seed, task, length, sample index).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

from hax_ssm.errors import HaxError, require
from hax_ssm.lm.tokenizer import Tokenizer

# Base tasks: template (with {context} and {query}), answer prefix, generation budget, metric.
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I will "
    "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic {type_needle_v} "
    "for {query} mentioned in the provided text?"
)
BASE_TASKS = {
    "niah": (
        NIAH_TEMPLATE,
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
        "all",
    ),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
        30,
        "all",
    ),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
        "all",
    ),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
        "all",
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
        "part",
    ),
}


def _niah(haystack: str, k: str, v: str, num_k: int = 1, num_v: int = 1, num_q: int = 1) -> tuple[str, dict]:
    return "niah", {"haystack": haystack, "type_k": k, "type_v": v, "num_k": num_k, "num_v": num_v, "num_q": num_q}


# The task list of RULER's synthetic.yaml, with "essay" haystacks on local books and QA on local Wikipedia.
TASKS: dict[str, tuple[str, dict]] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("book", "words", "numbers"),
    "niah_single_3": _niah("book", "words", "uuids"),
    "niah_multikey_1": _niah("book", "words", "numbers", num_k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("book", "words", "numbers", num_v=4),
    "niah_multiquery": _niah("book", "words", "numbers", num_q=4),
    "vt": ("variable_tracking", {"num_chains": 1, "num_hops": 4}),
    "cwe": ("common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": ("freq_words_extraction", {"alpha": 2.0}),
    "qa_wiki": ("qa", {}),
}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 evenly spaced needle depths, in percent
# Smallest haystack size per base task: frequent-word counts are n * k^-alpha / zeta(alpha), so the three
# answers appear at least once only from n of about 30 words on.
# Variable tracking spreads 5 statements over the noise lines, so it needs at least 5 of them.
_SMALLEST = {"freq_words_extraction": 64, "variable_tracking": 5}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


@dataclass
class RulerSample:
    task: str
    index: int
    input: str  # the prompt without its answer prefix
    answer_prefix: str
    outputs: list[str]
    length: int  # tokens of input + answer_prefix, plus max_new_tokens
    max_new_tokens: int
    metric: str  # "all" or "part"
    depth: list[float] | None = None  # percent depth of what holds the answer (needles, gold paragraph)
    target_length: int | None = None  # the length asked for

    @property
    def prompt(self) -> str:
        return self.input + self.answer_prefix

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_record(cls, record: dict, task: str | None = None) -> RulerSample:
        """Our JSONL records, or the ones RULER's prepare.py writes (index, input, outputs, length, answer_prefix)."""
        name = record.get("task") or task
        require(bool(name), "RULER record without a task name: pass the task (e.g. the file's folder name)")
        base = _base_task(name)
        _, _, budget, metric = BASE_TASKS[base]
        return cls(
            task=name,
            index=int(record.get("index", 0)),
            input=record["input"],
            answer_prefix=record.get("answer_prefix", ""),
            outputs=[str(o) for o in record["outputs"]],
            length=int(record.get("length", 0)),
            max_new_tokens=int(record.get("max_new_tokens", budget)),
            metric=record.get("metric", metric),
            depth=record.get("depth"),
            target_length=record.get("target_length"),
        )


def _base_task(name: str) -> str:
    """The base task of one of our task names or of RULER's own (niah_*, vt, cwe, fwe, qa_1, qa_2)."""
    if name in TASKS:
        return TASKS[name][0]
    for prefix, base in (
        ("niah", "niah"),
        ("vt", "variable_tracking"),
        ("cwe", "common_words_extraction"),
        ("fwe", "freq_words_extraction"),
        ("qa", "qa"),
    ):
        if name.startswith(prefix):
            return base
    raise HaxError(f"unknown RULER task {name!r}: allowed are {', '.join(TASKS)}")


def resolve_tasks(names: list[str] | None) -> list[str]:
    """Task names, checked; None or ["all"] means every task."""
    if not names or names == ["all"]:
        return list(TASKS)
    for name in names:
        if name not in TASKS:
            raise HaxError(f"unknown RULER task {name!r}: allowed are {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


@dataclass
class RulerText:
    """The local text the tasks are built on: long prose for haystacks, articles for QA."""

    haystack: str
    articles: list[tuple[str, str]] = field(default_factory=list)  # (title, text)

    @cached_property
    def haystack_words(self) -> list[str]:
        return self.haystack.split()

    @cached_property
    def paragraphs(self) -> list[tuple[int, str]]:
        """(article number, paragraph) of every paragraph of at least 30 words."""
        return [
            (a, " ".join(p.split()))
            for a, (_, text) in enumerate(self.articles)
            for p in text.split("\n\n")
            if len(p.split()) >= 30
        ]

    @classmethod
    def from_corpus(cls, corpus_dir: str | Path, tokenizer: Tokenizer, split: str = "test") -> RulerText:
        """Haystack from the held-out books of ``split``; articles from the corpus's QA source (any split)."""
        from hax_ssm.lm.corpus.reader import TokenCorpus

        corpus = TokenCorpus(corpus_dir)
        require(
            corpus.manifest["tokenizer"]["sha256"] == tokenizer.sha256,
            f"{corpus_dir} was tokenized with {corpus.manifest['tokenizer']['name']}, not {tokenizer.name}",
        )
        roles = {name: info["role"] for name, info in corpus.manifest["sources"].items()}
        books = {n for n, r in roles.items() if r == "books"}
        haystack = "\n\n".join(tokenizer.decode(doc) for _, doc in corpus.split(split).documents(sources=books))
        articles = []
        for name in ("train", "val", "test"):
            part = corpus.split(name)
            for i, doc in part.documents(sources={n for n, r in roles.items() if r == "qa"}):
                articles.append((part.metadata[i]["title"], tokenizer.decode(doc)))
        require(len(haystack.split()) >= 100, f"{corpus_dir}: its {split} split holds no book text for haystacks")
        return cls(haystack=haystack, articles=articles)


def _singular(text: str) -> str:
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def _rng(*parts: object) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little"))


def _zeta(alpha: float, terms: int = 100_000) -> float:
    """Riemann zeta by a partial sum plus the integral of the tail (RULER uses scipy.special.zeta)."""
    return sum(k**-alpha for k in range(1, terms + 1)) + terms ** (1 - alpha) / (alpha - 1)


class RulerGenerator:
    """Builds samples of every task in ``TASKS`` on ``text``, sized in ``tokenizer``'s tokens."""

    def __init__(self, tokenizer: Tokenizer, text: RulerText, seed: int = 42):
        self.tokenizer, self.text, self.seed = tokenizer, text, seed
        require(len(text.haystack_words) >= 100, "haystack text: needs at least 100 words")

    # -- word lists --------------------------------------------------------------------------------------------

    @cached_property
    def _wonderwords(self) -> dict[str, list[str]]:
        try:
            assets = resources.files("wonderwords.assets")
        except ModuleNotFoundError:
            raise HaxError("RULER word tasks need wonderwords: pip install 'hax-ssm[lm]'") from None
        return {
            kind: sorted({w.strip() for w in (assets / f"{kind}list.txt").read_text().splitlines() if w.strip()})
            for kind in ("noun", "adjective", "verb")
        }

    def _needle_word(self, rng: random.Random) -> str:
        """An adjective-noun pair, as RULER's word needles (drawn directly, not from the 6M-pair list)."""
        return f"{rng.choice(self._wonderwords['adjective'])}-{rng.choice(self._wonderwords['noun'])}"

    @cached_property
    def common_words(self) -> list[str]:
        ww = self._wonderwords
        words = sorted(set(ww["noun"]) | set(ww["adjective"]) | set(ww["verb"]))
        random.Random(self.seed).shuffle(words)
        return words

    def _random_value(self, kind: str, rng: random.Random) -> str:
        if kind == "numbers":
            return str(rng.randint(10**6, 10**7 - 1))
        if kind == "words":
            return self._needle_word(rng)
        if kind == "uuids":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        raise HaxError(f"needle type {kind!r}: allowed are numbers, words, uuids")

    # -- fitting a sample to a length --------------------------------------------------------------------------

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _fit(
        self,
        build: Callable[[int], tuple[str, str, list[str], list[float] | None]],
        length: int,
        budget: int,
        task: str,
        low: int = 1,
    ) -> tuple[str, str, list[str], list[float] | None, int]:
        """The largest haystack size n whose prompt plus ``budget`` fits in ``length`` tokens (binary search;
        ``build(n)`` must be deterministic in n and grow with it)."""

        def fits(n: int) -> tuple[bool, tuple]:
            built = build(n)
            used = self._count(built[0] + built[1]) + budget
            return used <= length, (*built, used)

        ok, best = fits(low)
        if not ok:
            raise HaxError(f"length {length}: too short for task {task} (its smallest prompt needs {best[-1]} tokens)")
        lo, hi = low, low * 2
        while True:  # gallop to a size that no longer fits
            ok, built = fits(hi)
            if not ok:
                break
            lo, best, hi = hi, built, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok, built = fits(mid)
            if ok:
                lo, best = mid, built
            else:
                hi = mid
        return best

    # -- tasks -------------------------------------------------------------------------------------------------

    def generate(self, task: str, length: int, num_samples: int, depth: float | None = None) -> list[RulerSample]:
        """``num_samples`` samples of ``task`` at ``length`` tokens; ``depth`` (percent) pins every needle."""
        base, args = TASKS[resolve_tasks([task])[0]]
        require(length >= 16, f"length {length}: must be at least 16 tokens")
        require(num_samples >= 1, f"samples {num_samples}: must be at least 1")
        require(depth is None or 0 <= depth <= 100, f"depth {depth}: must be a percentage in [0, 100]")
        require(depth is None or base == "niah", f"--depths applies to needle tasks, not {task}")
        template, prefix, budget, metric = BASE_TASKS[base]
        samples = []
        for index in range(num_samples):
            rng_seed = (self.seed, task, length, index, depth)
            make = getattr(self, f"_build_{base}")
            inp, pre, outputs, depths, used = self._fit(
                lambda n, make=make, rng_seed=rng_seed: make(
                    _rng(*rng_seed), n, template, prefix, depth=depth, length=length, **args
                ),
                length,
                budget,
                task,
                low=_SMALLEST.get(base, 1),
            )
            samples.append(
                RulerSample(
                    task=task,
                    index=index,
                    input=inp,
                    answer_prefix=pre,
                    outputs=outputs,
                    length=used,
                    max_new_tokens=budget,
                    metric=metric,
                    depth=depths,
                    target_length=length,
                )
            )
        return samples

    def _insert_at_depths(self, units: list[str], needles: list[str], depths: list[float]) -> tuple[list[str], list]:
        """Insert each needle before unit round(len * depth / 100); returns the units and the actual depths."""
        order = sorted(range(len(needles)), key=lambda i: depths[i])
        out, actual, cursor = [], [0.0] * len(needles), 0
        for i in order:
            position = int(len(units) * depths[i] / 100)
            out.extend(units[cursor:position])
            cursor = max(cursor, position)
            actual[i] = 100.0 * cursor / max(len(units), 1)
            out.append(needles[i])
        out.extend(units[cursor:])
        return out, actual

    def _build_niah(self, rng, n, template, prefix, *, haystack, type_k, type_v, num_k, num_v, num_q, depth, length):
        num_k = max(num_k, num_q)
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(self._random_value(type_k, rng))
            values.append([self._random_value(type_v, rng) for _ in range(num_v)])
            needles += [f"One of the special magic {type_v} for {keys[-1]} is: {v}." for v in values[-1]]
        owners = [k for k in range(num_k) for _ in range(num_v)]
        shuffle = list(range(len(needles)))
        rng.shuffle(shuffle)
        needles, owners = [needles[i] for i in shuffle], [owners[i] for i in shuffle]
        depths = [depth] * len(needles) if depth is not None else rng.sample(DEPTHS, len(needles))
        if haystack == "book":
            words = self.text.haystack_words
            start = rng.randrange(len(words))
            text = " ".join(words[(start + i) % len(words)] for i in range(n))
            units, actual = self._insert_at_depths(_SENTENCE_END.split(text), needles, depths)
            context = " ".join(units)
        else:
            if haystack == "noise":
                units = [NOISE] * n
            else:  # distractor needles with their own random keys
                units = [
                    f"One of the special magic {type_v} for {self._random_value(type_k, rng)} is: "
                    f"{self._random_value(type_v, rng)}."
                    for _ in range(n)
                ]
            if depth is None:
                depths = [100.0 * p / n for p in rng.sample(range(n), len(needles))]
            units, actual = self._insert_at_depths(units, needles, depths)
            context = "\n".join(units)
        queried = rng.sample(range(num_k), num_q)
        answers = [v for k in queried for v in values[k]]
        answer_depths = [actual[i] for k in queried for i, owner in enumerate(owners) if owner == k]
        query = (
            ", ".join(keys[k] for k in queried[:-1]) + ", and " + keys[queried[-1]] if num_q > 1 else keys[queried[0]]
        )
        noun = type_v
        if num_q * num_v == 1:  # RULER's singular wording for a single answer
            template, prefix, noun = _singular(template), _singular(prefix), type_v[:-1]
        fill = {"type_needle_v": noun, "context": context, "query": query}
        return template.format(**fill), prefix.format(**fill), answers, answer_depths

    def _vt_prompt(self, rng, n, template, prefix, num_chains, num_hops):
        names = set()
        while len(names) < num_chains * (num_hops + 1):
            names.add("".join(rng.choices(string.ascii_uppercase, k=5)))
        names = sorted(names)
        rng.shuffle(names)
        chains = []
        for c in range(num_chains):
            chain_vars = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
            first = str(rng.randint(10000, 99999))
            chains.append(
                (
                    chain_vars,
                    [f"VAR {chain_vars[0]} = {first}"]
                    + [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(num_hops)],
                )
            )
        sentences = [NOISE] * n
        for _, statements in chains:
            positions = sorted(rng.sample(range(len(sentences)), len(statements)))
            for j, (position, statement) in enumerate(zip(positions, statements, strict=True)):
                sentences.insert(position + j, statement)
        context = "\n".join(sentences).replace(". \n", ".\n")
        query = chains[0][1][0].split("=")[-1].strip()
        fill = {"context": context, "query": query, "num_v": num_hops + 1}
        return template.format(**fill), prefix.format(**fill), chains[0][0]

    def _build_variable_tracking(self, rng, n, template, prefix, *, num_chains, num_hops, depth, length):
        # RULER shows one solved example (a short instance) before the question.
        ex_input, ex_prefix, ex_answer = self._vt_prompt(rng, 5, template, prefix, num_chains, num_hops)
        example = ex_input + ex_prefix + " " + " ".join(ex_answer) + "\n"
        inp, pre, answer = self._vt_prompt(rng, n, template, prefix, num_chains, num_hops)
        return example + "\n" + inp, pre, answer, None

    def _cwe_words(self, rng, count: int) -> list[str]:
        """``count`` distinct words: wonderwords' nouns, adjectives and verbs, then adjective-noun pairs."""
        if count <= len(self.common_words):
            return rng.sample(self.common_words, count)
        words = dict.fromkeys(self.common_words)
        while len(words) < count:
            words[self._needle_word(rng)] = None
        words = list(words)
        rng.shuffle(words)
        return words

    def _cwe_list(self, rng, num_words, common_repeats, uncommon_repeats, num_cw):
        words = self._cwe_words(rng, num_words)
        common, uncommon = words[:num_cw], words[num_cw:]
        listing = common * common_repeats + uncommon * uncommon_repeats
        rng.shuffle(listing)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listing)), common

    def _build_common_words_extraction(self, rng, n, template, prefix, *, freq_cw, freq_ucw, num_cw, depth, length):
        short = length < 4096  # RULER's lighter repetition counts for short contexts
        example_args, main_repeats = ((20, 3, 1), (6, 1)) if short else ((40, 10, 3), (freq_cw, freq_ucw))
        ex_context, ex_answer = self._cwe_list(rng, example_args[0], example_args[1], example_args[2], num_cw)
        example = (
            template.format(context=ex_context, query="")
            + prefix
            + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_answer))
        )
        context, answer = self._cwe_list(rng, num_cw + n, main_repeats[0], main_repeats[1], num_cw)
        return example + "\n" + template.format(context=context, query=""), prefix, answer, None

    def _build_freq_words_extraction(self, rng, n, template, prefix, *, alpha, depth, length):
        vocab_size = max((length - BASE_TASKS["freq_words_extraction"][2]) // 50, 8)
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
        words = sorted(vocab)
        rng.shuffle(words)
        words[0] = "..."  # the most frequent "word" is noise, as in RULER
        zeta = _zeta(alpha)
        listing = [w for k, w in enumerate(words, 1) for _ in range(int(n * k**-alpha / zeta))]
        rng.shuffle(listing)
        return template.format(context=" ".join(listing), query=""), prefix, words[1:4], None

    def _cloze(self, rng) -> tuple[int, str, str]:
        """(paragraph number, question, answer): a sentence of a random paragraph with one span blanked."""
        paragraphs = self.text.paragraphs
        require(len(paragraphs) >= 2, "QA task: needs at least 2 article paragraphs of 30+ words")
        for _ in range(1000):
            p = rng.randrange(len(paragraphs))
            sentences = [s for s in _SENTENCE_END.split(paragraphs[p][1]) if 8 <= len(s.split()) <= 60]
            if not sentences:
                continue
            sentence = rng.choice(sentences)
            spans = [
                m.group(0) for m in re.finditer(r"(?<=\s)(?:[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+){0,3}|\d{3,4})\b", sentence)
            ]
            spans = [s for s in spans if sentence.count(s) == 1]
            if spans:
                answer = rng.choice(spans)
                blanked = sentence.replace(answer, "____")
                return (
                    p,
                    f'Which name, number or phrase is missing from this sentence in the documents: "{blanked}"',
                    answer,
                )
        raise HaxError("QA task: found no sentence with a name or number to ask about")

    def _build_qa(self, rng, n, template, prefix, *, depth, length):
        gold, query, answer = self._cloze(rng)
        paragraphs = self.text.paragraphs
        article = paragraphs[gold][0]
        same = [i for i, (a, _) in enumerate(paragraphs) if a == article and i != gold]
        other = [i for i, (a, _) in enumerate(paragraphs) if a != article]
        rng.shuffle(same)
        rng.shuffle(other)
        pool = same + other
        chosen = [gold] + [pool[i % len(pool)] for i in range(n - 1)]
        rng.shuffle(chosen)
        where = chosen.index(gold)
        context = "\n\n".join(f"Document {i + 1}:\n{paragraphs[d][1]}" for i, d in enumerate(chosen))
        return template.format(context=context, query=query), prefix, [answer], [100.0 * where / len(chosen)]


def write_samples(path: str | Path, samples: list[RulerSample]) -> None:
    from hax_ssm.utils.io import atomic_write_text

    atomic_write_text(path, "".join(s.to_json() + "\n" for s in samples))


def read_samples(path: str | Path) -> list[RulerSample]:
    """Samples from our JSONL, or from a RULER data file (its task is then the name of its folder)."""
    path = Path(path)
    require(path.is_file(), f"{path}: no such file")
    samples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                samples.append(RulerSample.from_record(json.loads(line), task=path.parent.name))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                if isinstance(err, HaxError):
                    raise
                raise HaxError(f"{path}:{lineno}: not a RULER record ({type(err).__name__}: {err})") from None
    return samples
