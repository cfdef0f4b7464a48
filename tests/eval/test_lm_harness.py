"""lm-evaluation-harness runs a shoal model on task files made here (nothing is downloaded): its multiple-choice
accuracy equals a plain one-by-one computation with the model, and its rolling bits per byte agrees with
`shoal eval`'s."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from shoal.bundle import load_model
from shoal.eval.scoring import score_documents

from ..conftest import STDLIB

QUESTIONS = [("def add(a, b):\n    return a", [" + b", " - zq", " ** ("], 0),
             ("import os\nimport", [" sys", " ))(", " 42"], 0),
             ("for i in range(10):\n   ", [" print(i)", " ]]]", " =="], 0),
             ("class Point:\n    def __init__(self", [", x, y):", ") x y", "((("], 0),
             ("x = [1, 2, 3]\nprint(len(", ["x))", "])", "y]"], 0),
             ("if __name__ ==", [" \"__main__\":", " 7 7", " ["], 0)]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "choice.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                                 for q, c, a in QUESTIONS))
    documents = sorted((STDLIB / "json").glob("*.py"))[:3]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": p.read_text()}) + "\n" for p in documents))
    for name, kind, extra in (("shoal_choice", "multiple_choice",
                               "doc_to_text: question\ndoc_to_choice: choices\ndoc_to_target: answer\n"
                               "metric_list:\n  - metric: acc\n"),
                              ("shoal_docs", "loglikelihood_rolling",
                               "doc_to_text: text\ndoc_to_target: text\nmetric_list:\n  - metric: bits_per_byte\n")):
        data = folder / ("choice.jsonl" if kind == "multiple_choice" else "docs.jsonl")
        (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {data}\ntest_split: test\noutput_type: {kind}\n{extra}")
    return folder, documents


def plain_choice_accuracy(loaded) -> float:
    """Each choice scored on its own, one forward pass over context + choice, no batching or padding."""
    right = 0
    for question, choices, answer in QUESTIONS:
        totals = []
        for choice in choices:
            context = loaded.tokenizer.encode(question, add_special_tokens=False).ids
            whole = loaded.tokenizer.encode(question + choice, add_special_tokens=False).ids
            with torch.no_grad():
                log_probs = torch.log_softmax(loaded.model(torch.tensor([whole[:-1]])).float()[0], dim=-1)
            positions = range(len(context) - 1, len(whole) - 1)
            totals.append(sum(float(log_probs[p, whole[p + 1]]) for p in positions))
        right += max(range(len(choices)), key=totals.__getitem__) == answer
    return right / len(QUESTIONS)


def test_lm_eval_runs_a_shoal_model(trained_run, tasks, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    import shoal.eval.lm_harness  # noqa: F401 (registers the "shoal" model)

    folder, documents = tasks
    results = lm_eval.simple_evaluate(model="shoal", model_args=f"pretrained={trained_run},batch_size=4",
                                      tasks=["shoal_choice", "shoal_docs"], bootstrap_iters=0,
                                      task_manager=TaskManager(include_path=str(folder)))["results"]
    loaded = load_model(trained_run)
    assert results["shoal_choice"]["acc,none"] == pytest.approx(plain_choice_accuracy(loaded))
    scores = score_documents(loaded.model, loaded.tokenizer, [(p.name, p.read_text()) for p in documents])
    shoal_bpb = sum(scores.nats) / math.log(2) / sum(scores.bytes)
    # The harness does not predict a closing end-of-text token; over thousands of tokens that is a small difference.
    assert results["shoal_docs"]["bits_per_byte,none"] == pytest.approx(shoal_bpb, rel=0.01)


def test_lm_eval_command_line(trained_run, tasks, tmp_path):
    """lm_eval's own command line with the model registered; batch_size in --model_args wins over its default."""
    folder, _ = tasks
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "shoal.eval.lm_harness", "--model", "shoal", "--model_args",
                             f"pretrained={trained_run},batch_size=4", "--tasks", "shoal_choice", "--include_path",
                             str(folder), "--output_path", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert written["results"]["shoal_choice"]["acc,none"] == pytest.approx(plain_choice_accuracy(load_model(trained_run)))
