"""The GPU end-to-end script on CPU at toy size: split over two calls, resumed, nothing imported that the
GPU image lacks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

from hax_ssm.lm.ruler import RulerGenerator, RulerText, write_samples

ROOT = Path(__file__).resolve().parents[2]
# what the GPU image does not have (it has torch, numpy, tiktoken, transformers and transformers' own deps)
ABSENT_ON_GPU = ["click", "datasets", "matplotlib", "pandas", "pyarrow", "rapidfuzz", "rdata", "rouge_score"]
ABSENT_ON_GPU += ["scipy", "typer", "wonderwords"]
RUN_AND_LIST_IMPORTS = """
import json, runpy, sys
sys.argv = ["lm_e2e.py", *sys.argv[1:]]
code = 0
try:
    runpy.run_path("benchmarks/lm_e2e.py", run_name="__main__")
except SystemExit as stop:
    code = stop.code
print("IMPORTED " + json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
sys.exit(code)
"""


def run_script(*args: str) -> tuple[int, str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_IMPORTS, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("IMPORTED "))
    return done.returncode, done.stdout + done.stderr, set(json.loads(line.removeprefix("IMPORTED ")))


def test_e2e_script_resumes_over_calls_and_imports_only_what_the_gpu_has(built_corpus, tiny_tokenizer, tmp_path):
    text = RulerText.from_corpus(built_corpus, tiny_tokenizer, split="train")
    ruler = tmp_path / "ruler.jsonl"
    write_samples(ruler, RulerGenerator(tiny_tokenizer, text, seed=1).generate("niah_single_1", 768, 1))
    out = tmp_path / "lm_e2e.json"
    args = ["--corpus", str(built_corpus), "--tokenizer", str(tiny_tokenizer.path), "--ruler-file", str(ruler)]
    args += ["--work-dir", str(tmp_path / "work"), "--out", str(out), "--size", "tiny", "--context", "64"]
    args += ["--batch-size", "4", "--train-seconds", "2", "--ppl-length", "512", "--ppl-docs", "2", "--device", "cpu"]

    code, log, imported = run_script(*args, "--call-seconds", "0.1")  # stops after a second of training
    assert code == 75, log
    assert not out.exists() and (tmp_path / "work" / "base" / "run" / "checkpoints" / "last.pt").is_file()
    assert not set(ABSENT_ON_GPU) & imported

    code, log, imported = run_script(*args, "--no-plot")
    assert code == 0, log
    assert not set(ABSENT_ON_GPU) & imported
    results = json.loads(out.read_text())
    for name, arch in (("base", "none"), ("hax", "argmax_lsh+key_selection")):
        variant = results["variants"][name]
        assert variant["sparse_arch"] == arch
        plan = json.loads((tmp_path / "work" / name / "plan.json").read_text())
        assert variant["steps"] == plan["steps"] >= 8
        curve = variant["validation_curve"]
        assert curve and all(a["train_seconds"] <= b["train_seconds"] for a, b in itertools.pairwise(curve))
        assert variant["perplexity"]["documents"] == 2 and variant["ruler"]["average_by_length"].keys() == {"768"}
    # the base run was stopped by the first call and continued by the second
    metrics = (tmp_path / "work" / "base" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics if '"train"' in m][-1] == results["variants"]["base"]["steps"]
    assert "provenance" in results
