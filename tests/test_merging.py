"""Checkpoint merging: linear and slerp over trained folders and LoRA adapters.

Identical models merge to themselves, slerp's endpoints are its inputs, linear with weights (1, 0)
is the first model, a linear merge is the weighted sum of the tensors written out here, and the
merged folder loads through the class, ``AutoModel(trust_remote_code=True)`` and
Sentence-Transformers in a process without e5mistral, embedding like a model built from the
merged state dict. Mismatched inputs are one error line and exit status 2.
"""

import json
import math
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from e5mistral import E5MistralModel
from e5mistral.cli.merge import main as merge_main
from e5mistral.errors import UserError
from e5mistral.merging import load_for_merge, merge_folders, merge_state_dicts, slerp
from e5mistral.testing import WITHOUT_E5MISTRAL, assert_close, fresh_process_env, make_tiny_model_folder

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["how tall is mont blanc", "river mountain", "a coffee engine and a violin"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny folders of one architecture (seeds 0 and 1) and one of another (3 layers)."""
    root = tmp_path_factory.mktemp("merge-inputs")
    return {
        "a": make_tiny_model_folder(root / "a", seed=0),
        "b": make_tiny_model_folder(root / "b", seed=1),
        "deeper": make_tiny_model_folder(root / "deeper", seed=2, num_hidden_layers=3),
    }


def state_of(folder):
    return E5MistralModel.from_pretrained(folder).state_dict()


def embed(model, tokenizer, texts=TEXTS):
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output


def test_identical_models_merge_to_themselves(folders, tmp_path):
    a = state_of(folders["a"])
    for method, extra in (("linear", {"weights": [0.3, 0.7]}), ("slerp", {"t": 0.4}), ("linear", {})):
        out = merge_folders([folders["a"], folders["a"]], tmp_path / f"{method}-{len(extra)}", method=method, **extra)
        merged = state_of(out)
        assert set(merged) == set(a)
        for key in a:
            assert_close(merged[key], a[key], rtol=1e-7, what=f"{method} {key}")
    three = merge_state_dicts([a, a, a], "linear")
    assert all(torch.equal(three[key], a[key]) for key in a)


def test_slerp_endpoints_and_linear_one_zero_give_the_inputs(folders):
    a, b = state_of(folders["a"]), state_of(folders["b"])
    at0, at1 = merge_state_dicts([a, b], "slerp", t=0.0), merge_state_dicts([a, b], "slerp", t=1.0)
    first = merge_state_dicts([a, b], "linear", weights=[1, 0])
    for key in a:
        assert torch.equal(at0[key], a[key]) and torch.equal(at1[key], b[key]) and torch.equal(first[key], a[key]), key
    assert any(not torch.equal(a[key], b[key]) for key in a)  # the two inputs really differ


def test_linear_is_the_weighted_sum_and_slerp_follows_the_arc(folders):
    a, b = state_of(folders["a"]), state_of(folders["b"])
    merged = merge_state_dicts([a, b], "linear", weights=[1, 3])  # normalised: 0.25, 0.75
    for key in a:
        assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key], rtol=1e-6, what=key)
    # slerp by hand on one tensor: the angle's arc, not the chord
    x, y = a["layers.0.self_attn.q_proj.weight"], b["layers.0.self_attn.q_proj.weight"]
    omega = math.acos(float((x * y).sum() / (x.norm() * y.norm())))
    by_hand = (math.sin(0.3 * omega) * x + math.sin(0.7 * omega) * y) / math.sin(omega)
    mid = merge_state_dicts([a, b], "slerp", t=0.7)["layers.0.self_attn.q_proj.weight"]
    assert_close(mid, by_hand, rtol=1e-6)
    assert (mid - (0.3 * x + 0.7 * y)).norm() > 1e-3 * mid.norm()  # not the linear merge
    # unit vectors stay unit; parallel and anti-parallel ones fall back to the linear path
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert_close(slerp(e1, e2, 0.25), torch.tensor([math.cos(math.pi / 8), math.sin(math.pi / 8)]))
    assert_close(slerp(e1, 2 * e1, 0.5), torch.tensor([1.5, 0.0]))
    assert torch.equal(slerp(e1, -e1, 0.5), torch.zeros(2))
    assert torch.equal(slerp(torch.zeros(2), e1, 0.5), torch.tensor([0.5, 0.0]))


def test_merge_refuses_mismatched_tensors_and_bad_arguments(folders):
    a, b = state_of(folders["a"]), state_of(folders["b"])
    missing = {k: v for k, v in b.items() if k != "norm.weight"}
    with pytest.raises(UserError, match="cannot merge: model 2 lacks norm.weight"):
        merge_state_dicts([a, missing], "linear")
    reshaped = {**b, "norm.weight": torch.ones(7)}
    with pytest.raises(UserError, match=r"norm.weight is \(7,\) in model 2 but \(32,\) in model 1"):
        merge_state_dicts([a, reshaped], "linear")
    with pytest.raises(UserError, match="slerp merges exactly two models"):
        merge_state_dicts([a, b, a], "slerp")
    with pytest.raises(UserError, match="--weights has 1 values for 2 models"):
        merge_state_dicts([a, b], "linear", weights=[1])
    with pytest.raises(UserError, match="weights must be >= 0 and not all 0"):
        merge_state_dicts([a, b], "linear", weights=[0, 0])


REMOTE = WITHOUT_E5MISTRAL + textwrap.dedent(
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        auto = model(**tokenizer(texts, padding=True, return_tensors="pt")).pooler_output.tolist()
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    print(json.dumps({"module": type(model).__module__, "auto": auto,
                      "st": st.encode(texts, prompt_name="document", convert_to_tensor=True).tolist()}))
    """
)


def test_merged_folder_loads_everywhere_and_embeds_like_the_merged_state_dict(folders, tmp_path, capsys):
    out = tmp_path / "merged"
    assert merge_main([str(folders["a"]), str(folders["b"]), "--weights", "0.5", "0.5", "--output", str(out)]) == 0
    assert f"merged 2 models (linear, weights 0.5 0.5) -> {out}" in capsys.readouterr().out
    for name in ("config.json", "modeling_e5mistral.py", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    inputs_files = [p.name for p in folders["a"].iterdir()]
    assert sorted(p.name for p in out.iterdir()) == sorted([*inputs_files, "merge_info.json"])
    assert json.loads((out / "config.json").read_text()) == json.loads((folders["a"] / "config.json").read_text())
    assert json.loads((out / "merge_info.json").read_text())["weights"] == [0.5, 0.5]

    # the oracle: a model built from the merged state dict (computed here, from the two inputs)
    reference_model, tokenizer = load_for_merge(folders["a"])
    reference_model.load_state_dict(merge_state_dicts([state_of(folders["a"]), state_of(folders["b"])], "linear"))
    expected = embed(reference_model, tokenizer)
    loaded, loaded_tokenizer = E5MistralModel.from_pretrained(out).eval(), load_for_merge(out)[1]
    assert_close(embed(loaded, loaded_tokenizer), expected, rtol=1e-6, what="E5MistralModel")
    a_model, _ = load_for_merge(folders["a"])
    assert (embed(a_model, tokenizer) - expected).norm() > 1e-3 * expected.norm()  # merging changed the model

    proc = subprocess.run(  # the return code is asserted below, with stderr
        [sys.executable, "-I", "-c", REMOTE, str(out), json.dumps(TEXTS)],
        check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp_path,
        env=fresh_process_env(tmp_path), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["module"].startswith("transformers_modules")
    assert_close(torch.tensor(got["auto"]), expected, rtol=1e-5, what="AutoModel(trust_remote_code=True)")
    assert_close(torch.tensor(got["st"]), expected, rtol=1e-5, what="SentenceTransformer")


def make_adapter(base_folder, path, seed):
    """A LoRA adapter on ``base_folder`` with random (non-zero) A and B, saved to ``path``."""
    from peft import LoraConfig, get_peft_model

    model = E5MistralModel.from_pretrained(base_folder)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    peft_model.save_pretrained(path)
    return Path(path)


def test_adapters_are_merged_into_their_base_then_averaged(folders, tmp_path):
    base = folders["a"]
    one = make_adapter(base, tmp_path / "run1" / "adapter", 1)
    two = make_adapter(base, tmp_path / "run2" / "adapter", 2)
    assert json.loads((one / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    out = merge_folders([one, two], tmp_path / "merged")
    merged = state_of(out)
    first, second = load_for_merge(one)[0].state_dict(), load_for_merge(two)[0].state_dict()
    base_state = state_of(base)
    key = "layers.0.self_attn.q_proj.weight"
    assert (first[key] - base_state[key]).norm() > 1e-2 * base_state[key].norm()  # the adapter does something
    for k in merged:
        # the average of the merged models is the base plus the average of the updates (B @ A scaled)
        assert_close(merged[k], 0.5 * (first[k] + second[k]), rtol=1e-6, what=k)
        assert_close(merged[k] - base_state[k], 0.5 * ((first[k] - base_state[k]) + (second[k] - base_state[k])),
                     rtol=1e-4, what=f"{k} update")
    assert (out / "tokenizer.json").is_file() and (out / "modules.json").is_file()


def run_script(*args, cwd):
    return subprocess.run(  # the caller asserts the return code
        [sys.executable, str(REPO / "scripts" / "merge.py"), *map(str, args)],
        check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def test_command_refuses_mismatches_with_one_line_and_exit_2(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["b"], broken)
    weights = load_file(broken / "model.safetensors")
    del weights["layers.1.mlp.up_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cases = [
        ((folders["a"], folders["deeper"]), "their configs differ in num_hidden_layers (2 vs 3)"),
        ((folders["a"], broken), "not in the checkpoint (would stay random): layers.1.mlp.up_proj.weight"),
        ((folders["a"], tmp_path / "nothing"), "is not a model folder"),
        ((folders["a"], folders["b"], "--weights", "1"), "--weights has 1 values for 2 models"),
        ((folders["a"], folders["b"], "--method", "slerp", "--t", "2"), "slerp merges exactly two models with --t in"),
    ]
    for args, message in cases:
        proc = run_script(*args, "--output", tmp_path / "out", cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
    proc = run_script(folders["a"], folders["b"], "--output", tmp_path / "full", cwd=tmp_path)
    assert proc.returncode == 2 and "exists and is not an empty folder" in proc.stderr


def test_a_matryoshka_inputs_truncate_dim_carries_over(folders, tmp_path):
    """The first input's ``truncate_dim`` (config_sentence_transformers.json) is the merged folder's:
    without it the merged model would be loaded at full width, silently."""
    a = tmp_path / "a"
    shutil.copytree(folders["a"], a)
    st_config = json.loads((a / "config_sentence_transformers.json").read_text())
    (a / "config_sentence_transformers.json").write_text(json.dumps({**st_config, "truncate_dim": 8}))
    out = merge_folders([a, folders["b"]], tmp_path / "merged")
    assert json.loads((out / "config_sentence_transformers.json").read_text())["truncate_dim"] == 8
    from e5mistral import E5Embedder

    assert E5Embedder.from_pretrained(str(out)).encode(["a text"]).shape == (1, 8)
