"""Publishing: the staged upload folder loads without e5mistral, and the cards carry the run's facts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from e5mistral.testing import assert_close, fresh_process_env
from e5mistral.cli import push as push_command
from e5mistral.hub import collect_model_info, export_dataset_folder, export_model_folder, push_folder

REPO = Path(__file__).resolve().parents[1]
INSTRUCTION = "Given a web search query, find passages that answer it"
QUERIES = ["how tall is mont blanc", "boiling point of water at altitude"]
DOCUMENTS = [
    "Mont Blanc rises 4,806 metres above sea level.",
    "Water boils at lower temperatures in the mountains.",
    "Bread needs yeast.",
]

LOADER = r"""
import json, sys
sys.modules["e5mistral"] = None  # make `import e5mistral` fail, whatever is installed
try:
    import e5mistral  # noqa: F401
    raise SystemExit("e5mistral is importable in the fresh process")
except ImportError:
    pass
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

folder, payload = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
def auto(texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).pooler_output.tolist()
st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
prompt = st.prompts["query"]
print(json.dumps({
    "model_module": type(model).__module__,
    "auto_queries": auto([prompt + q for q in payload["queries"]]),
    "auto_documents": auto(payload["documents"]),
    "st_queries": st.encode(payload["queries"], prompt_name="query", convert_to_tensor=True).tolist(),
    "st_documents": st.encode(payload["documents"], convert_to_tensor=True).tolist(),
    "prompt": prompt,
}))
"""


_fresh_env = fresh_process_env


def _hub_copy(folder: Path, dest: Path) -> Path:
    """What a Hub download gives: the files only (empty folders are not uploaded)."""
    for path in folder.rglob("*"):
        if path.is_file():
            (dest / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.relative_to(folder))
    return dest


@pytest.fixture(scope="module")
def run_folder(tiny_folder, tmp_path_factory):
    """A trained-model folder as the trainer leaves it: merged model + adapter + run files + results."""
    from peft import LoraConfig, get_peft_model

    from e5mistral import E5Embedder, E5MistralModel
    from e5mistral.evaluation.retrieval import evaluate_retrieval
    from e5mistral.training.arguments import E5TrainingArguments

    folder = tmp_path_factory.mktemp("run") / "my-e5"
    shutil.copytree(tiny_folder, folder)
    base = E5MistralModel.from_pretrained(folder)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(folder / "adapter")
    args = E5TrainingArguments(
        output_dir=str(folder),
        learning_rate=3e-4,
        warmup_steps=7,
        per_device_train_batch_size=6,
        temperature=0.05,
        seed=11,
    )
    (folder / "training_args.json").write_text(args.to_json_string())
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": 42, "log_history": [{"loss": 2.5, "step": 10}, {"loss": 1.25, "step": 40}]})
    )
    (folder / "training_info.json").write_text(json.dumps({"dataset": "someone/e5-synthetic", "num_train_rows": 1234}))
    (folder / "optimizer.pt").write_bytes(b"not for upload")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_text("log")

    embedder = E5Embedder.from_pretrained(folder)
    corpus = {f"d{i}": text for i, text in enumerate(DOCUMENTS)}
    ours = evaluate_retrieval(
        embedder,
        {"q0": QUERIES[0], "q1": QUERIES[1]},
        corpus,
        {"q0": {"d0": 1}, "q1": {"d1": 1}},
        INSTRUCTION,
        k_values=(1, 10),
    )
    results = {
        "model": str(folder),
        "beir": {
            "toy": {
                "split": "test",
                "instruction": INSTRUCTION,
                "num_queries": 2,
                "num_documents": 3,
                "metrics": ours.metrics,
            }
        },
        "mteb": {},
    }
    (folder.parent / "results.json").write_text(json.dumps(results))
    return folder


def test_exported_folder_loads_without_e5mistral_and_embeds_identically(run_folder, tmp_path):
    from e5mistral import E5Embedder

    stage = export_model_folder(run_folder, tmp_path / "stage", "me/my-e5", run_folder.parent / "results.json")
    hub = _hub_copy(stage, tmp_path / "hub-download")
    payload = json.dumps({"queries": QUERIES, "documents": DOCUMENTS})
    proc = subprocess.run(  # the return code is asserted below, with stderr
        [sys.executable, "-I", "-c", LOADER, str(hub), payload],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_fresh_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model_module"].startswith("transformers_modules"), out["model_module"]  # the folder's own code ran

    # the training run's embeddings: E5Embedder on the original folder, in this process
    embedder = E5Embedder.from_pretrained(run_folder)
    expected_q = embedder.encode_queries(QUERIES, instruction=INSTRUCTION)  # (2, H)
    expected_d = embedder.encode_documents(DOCUMENTS)  # (3, H)
    assert out["prompt"] == f"Instruct: {INSTRUCTION}\nQuery: "
    for key, expected in [
        ("auto_queries", expected_q),
        ("st_queries", expected_q),
        ("auto_documents", expected_d),
        ("st_documents", expected_d),
    ]:
        assert_close(torch.tensor(out[key]), expected, rtol=1e-5, what=key)


def test_staged_model_folder_is_the_allow_list_plus_card(run_folder, tmp_path):
    stage = export_model_folder(run_folder, tmp_path / "stage", "me/my-e5", include_adapter=True)
    files = {p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()}
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "modeling_e5mistral.py",
        "configuration_e5mistral.py",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
        "config_sentence_transformers.json",
    } <= files
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= files
    assert not {"optimizer.pt", "runs/events.out", "training_args.json", "trainer_state.json"} & files
    without = export_model_folder(run_folder, tmp_path / "stage2", "me/my-e5")
    assert not (without / "adapter").exists()
    with pytest.raises(FileExistsError, match="not empty"):
        export_model_folder(run_folder, stage, "me/my-e5")


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_carries_the_runs_real_numbers(run_folder, tmp_path):
    results = json.loads((run_folder.parent / "results.json").read_text())
    stage = export_model_folder(
        run_folder, tmp_path / "stage", "me/my-e5", run_folder.parent / "results.json", license="apache-2.0"
    )
    meta = _front_matter(stage / "README.md")
    (entry,) = meta["model-index"]
    metrics = {m["type"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    for name, value in results["beir"]["toy"]["metrics"].items():
        assert metrics[name.replace("@", "_at_")] == pytest.approx(value)
    assert meta["datasets"] == ["someone/e5-synthetic"] and meta["license"] == "apache-2.0"
    assert "base_model" not in meta  # the adapter's base is a local folder, not a Hub id: left out

    body = (stage / "README.md").read_text()
    info = collect_model_info(run_folder)
    assert info["lora"] == {"rank (r)": 4, "alpha": 8, "dropout": 0.1, "target modules": "q_proj, v_proj"}
    assert info["hyperparameters"]["learning rate"] == 3e-4 and info["hyperparameters"]["InfoNCE temperature"] == 0.05
    assert (
        info["hyperparameters"]["optimizer steps"] == 42
        and info["hyperparameters"]["final training loss (last logged)"] == 1.25
    )
    for fact in [
        "| rank (r) | 4 |",
        "| learning rate | 0.0003 |",
        "| warm-up steps | 7 |",
        "| InfoNCE temperature | 0.05 |",
        "| training rows | 1234 |",
        "me/my-e5",
        f"{100 * results['beir']['toy']['metrics']['ndcg@10']:.2f}",
    ]:
        assert fact in body, fact
    assert "hub_token" not in body and "\n\n\n" not in body


def test_model_card_leaves_out_what_the_run_does_not_have(tiny_folder, tmp_path):
    stage = export_model_folder(tiny_folder, tmp_path / "stage", "me/bare")
    meta = _front_matter(stage / "README.md")
    assert "model-index" not in meta and "license" not in meta and "datasets" not in meta and "base_model" not in meta
    body = (stage / "README.md").read_text()
    for absent in ["## Training", "### LoRA", "## Evaluation", "### Training data"]:
        assert absent not in body
    assert "No evaluation results are recorded" in body


class FakeApi:
    calls: ClassVar[list] = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        FakeApi.calls.append(("create_repo", repo_id, repo_type, private))

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        contents = b"".join(p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file())
        FakeApi.calls.append(("upload_folder", repo_id, repo_type, files, contents))
        return f"https://huggingface.co/{repo_id}/commit/abc"


def test_push_script_uploads_exactly_the_local_dir_and_never_writes_the_token(run_folder, tmp_path, monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    common = [
        "model",
        "--model",
        str(run_folder),
        "--repo-id",
        "me/my-e5",
        "--results",
        str(run_folder.parent / "results.json"),
    ]

    folder, url = push_command.publish([*common, "--local-dir", str(tmp_path / "out")])
    assert url is None and not [
        c for c in FakeApi.calls if c[0] == "upload_folder"
    ]  # --local-dir alone uploads nothing
    local_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    _, url = push_command.publish(common)
    (init, create, upload) = FakeApi.calls
    assert init == ("init", "hf_secret_token_123") and create == ("create_repo", "me/my-e5", "model", False)
    assert upload[3] == local_files and url.endswith("/commit/abc")
    assert b"hf_secret_token_123" not in upload[4]


def test_dataset_folder_stages_and_loads_offline(tmp_path, monkeypatch):
    from datasets import Dataset
    from huggingface_hub import DatasetCard, DatasetCardData

    data = tmp_path / "synthetic-data"
    rows = {
        "query": ["q1", "q2"],
        "positive": ["p1", "p2"],
        "negatives": [["n1"], []],
        "instruction": ["i", "i"],
        "task": ["short_long"] * 2,
        "language": ["en", "de"],
    }
    (data / "data" / "short_long").mkdir(parents=True)
    Dataset.from_dict(rows).to_parquet(str(data / "data" / "short_long" / "train-00000-of-00001.parquet"))
    card_data = DatasetCardData(
        configs=[{"config_name": "short_long", "data_files": [{"split": "train", "path": "data/short_long/*.parquet"}]}]
    )
    DatasetCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n# toy\n").save(
        str(data / "README.md")
    )
    (data / ".cache").mkdir()
    (data / ".cache" / "junk").write_text("x")

    staged = export_dataset_folder(data, tmp_path / "stage")
    assert not (staged / ".cache").exists() and (staged / "README.md").is_file()
    code = "import sys, json; from datasets import load_dataset; ds = load_dataset(sys.argv[1], 'short_long', split='train'); print(json.dumps(ds.to_dict()))"
    proc = subprocess.run(  # the return code is asserted below, with stderr
        [sys.executable, "-I", "-c", code, str(_hub_copy(staged, tmp_path / "hub"))],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**_fresh_env(tmp_path), "HF_DATASETS_CACHE": str(tmp_path / "ds-cache")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == rows

    folder, url = push_command.publish(
        ["dataset", "--data", str(data), "--repo-id", "me/data", "--local-dir", str(tmp_path / "cli")]
    )
    assert url is None
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == sorted(
        p.relative_to(staged) for p in staged.rglob("*")
    )
    with pytest.raises(FileNotFoundError, match="export it first"):
        export_dataset_folder(tmp_path / "stage" / "data", tmp_path / "nowhere")
    FakeApi.calls = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    push_folder(staged, "me/data", "dataset", private=True)
    assert FakeApi.calls[0] == ("init", None) and FakeApi.calls[1] == ("create_repo", "me/data", "dataset", True)
