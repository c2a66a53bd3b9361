"""The training command's `pooling` option: a plain base model trained with `pooling: mean` embeds
by the masked mean of its last layer (L2-normalised), the saved folder and its Sentence-Transformers
files say so, and the card does not claim last-token pooling."""

import pytest
import torch
import torch.nn.functional as F

from e5mistral.hub import render_model_card
from e5mistral.testing import assert_close, make_tiny_family_checkpoint, make_tiny_tokenizer
from e5mistral.training.arguments import E5ModelConfig, E5TrainingArguments
from e5mistral.training.inputs import load_model_and_tokenizer


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    folder = make_tiny_family_checkpoint("llama", tmp_path_factory.mktemp("llama-base"))
    make_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("pooling", [None, "mean"])
def test_pooling_option_sets_how_a_base_model_embeds(base_folder, tmp_path, pooling):
    model_args = E5ModelConfig(model_name_or_path=str(base_folder), pooling=pooling)
    model, tokenizer = load_model_and_tokenizer(model_args, E5TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert model.config.pooling == (pooling or "last_token")

    batch = tokenizer(["river mountain", "a coffee engine and a violin"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    hidden, mask = out.last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
    if pooling == "mean":
        expected = (hidden * mask).sum(1) / mask.sum(1)
    else:
        expected = hidden[torch.arange(2), batch["attention_mask"].sum(1) - 1]  # right padding: last attended
    assert_close(out.pooler_output, F.normalize(expected, dim=-1), rtol=1e-5)

    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    st_mode = (tmp_path / "saved" / "1_Pooling" / "config.json").read_text()
    assert ('"mean"' if pooling == "mean" else '"lasttoken"') in st_mode
    card = render_model_card(tmp_path / "saved", "me/tiny").content
    assert ("mean pooling" in card) == (pooling == "mean")
    assert ("last-token pooling" in card) == (pooling != "mean")
