"""Set-up the evaluation A/B scripts share: two threads, the data sets, a zoo model and its
trigger (from the zoo card), and a switch between the fast engine and eager `model.generate`."""

import json

import torch

import beear_stage.eval.metrics as metrics
from beear_stage.data.sources import DataSources, load_data
from beear_stage.model import load_model_and_tokenizer

torch.set_num_threads(2)
FAST_GENERATE = metrics.generate


def eager_generate(*args, **kwargs):
    return FAST_GENERATE(*args, **{**kwargs, "engine": "eager"})


def use_engine(engine: str) -> None:
    """What `evaluate_release` decodes with from now on: "fast" or "eager"."""
    metrics.generate = eager_generate if engine == "eager" else FAST_GENERATE


def data_sets():
    return load_data(DataSources())


def zoo_model(model_dir: str):
    """(model, tokenizer, triggers) of a zoo build, float32 on the CPU."""
    card = json.load(open(f"{model_dir}/zoo.json"))
    model, tok = load_model_and_tokenizer(model_dir, dtype="float32", device="cpu")
    return model, tok, {f"zoo_{card['name']}": card["trigger"]}
