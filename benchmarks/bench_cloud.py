"""Time the cloud's compute per request: VQ-VAE decode, projector, LLM prefill and N generated tokens.

Usage: python benchmarks/bench_cloud.py [--tokenizer build/tokenizer] [--cloud build/cloud]
       [--prepared build/data] [--requests 6] [--new-tokens 16] [--repeats 3] [--params params.yaml]

A request is one test clip's indices and a question. The steps, timed one by one:
  decode     indices (N,) -> VQ-VAE decoder -> normalised features (4N, 263)
  projector  features -> motion embeddings (motion tokens, d_model)
  prefill    prompt tokenisation, splicing and the LLM's forward pass over the whole prompt, with KV cache
  generate   --new-tokens greedy decoding steps on the cache (end-of-text is ignored, so every request
             generates exactly that many tokens)
Each step's time is the fastest of --repeats runs after one warm-up, averaged over --requests evenly
spaced test clips. The ratio of the whole request to the decode step is reported too. The LLM and the
projector come from --cloud (cloud.json) when it has a trained projector; otherwise an untrained projector
with the `cloud` parameters is timed, which costs the same compute. Writes results/bench_cloud.json.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from toau.cloud.service import load_bundle
from toau.cloud.stage import CLOUD_FILE, cloud_params
from toau.config import PROJECT_ROOT, load_params
from toau.data.prepared import PreparedData
from toau.provenance import provenance

RESULTS_FILE = PROJECT_ROOT / "results" / "bench_cloud.json"
QUESTION = "What is the person doing?"
STEPS = ("decode", "projector", "prefill", "generate")


def fastest(function, repeats: int) -> tuple[float, object]:
    """Return the fastest of `repeats` runs of function() in seconds (after one warm-up run) and its last result."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


@torch.no_grad()
def prefill(model, motion_embeds: torch.Tensor, question: str):
    """Run the prompt through the LLM with a KV cache; return (cache, next token ids (1, 1), prompt length)."""
    prompt = model.encode(question, motion_embeds.shape[0]).ids
    embeds, mask, positions = model.embed_batch([prompt], [motion_embeds])
    output = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return output.cache, output.logits[:, -1:].argmax(dim=-1), len(prompt)


@torch.no_grad()
def generate(model, motion_embeds: torch.Tensor, question: str, new_tokens: int) -> int:
    """Prefill, then run `new_tokens` greedy decoding steps; return the prompt length."""
    cache, token, length = prefill(model, motion_embeds, question)
    for step in range(new_tokens):
        position = torch.tensor([[length + step]])
        output = model.llm(input_ids=token, position_ids=position, cache=cache, use_cache=True)
        cache, token = output.cache, output.logits[:, -1:].argmax(dim=-1)
    return length


def time_request(bundle, indices: np.ndarray, new_tokens: int, repeats: int) -> dict:
    """Return the fastest seconds of each step of one request, and its token counts."""
    seconds = {}
    seconds["decode"], motion = fastest(lambda: bundle.features(indices), repeats)
    seconds["projector"], motion_embeds = fastest(lambda: bundle.model.project(motion).detach(), repeats)
    seconds["prefill"], _ = fastest(lambda: prefill(bundle.model, motion_embeds, QUESTION), repeats)
    with_prefill, prompt_length = fastest(lambda: generate(bundle.model, motion_embeds, QUESTION, new_tokens), repeats)
    seconds["generate"] = max(with_prefill - seconds["prefill"], 0.0)
    return {"seconds": seconds, "motion_tokens": motion_embeds.shape[0], "prompt_tokens": prompt_length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="build/tokenizer", help="tokenizer folder written by the tokenizer stage")
    parser.add_argument("--cloud", default="build/cloud", help="projector folder written by the projector stage")
    parser.add_argument("--prepared", default="build/data", help="prepared dataset folder")
    parser.add_argument("--params", default=None, help="parameter file (default: params.yaml in the project)")
    parser.add_argument("--requests", type=int, default=6, help="test clips timed as requests")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per step; the fastest counts")
    args = parser.parse_args()

    params = cloud_params(load_params(args.params, "cloud"))
    torch.set_num_threads(int(params["threads"]))
    cloud_file = Path(args.cloud) / CLOUD_FILE
    if cloud_file.is_file():
        record = json.loads(cloud_file.read_text())
        llm_name, projector, tokens_per = record["llm"], args.cloud, record["tokens_per"]
    else:
        llm_name, projector, tokens_per = params["llm"], None, params["tokens_per"]
    bundle = load_bundle(args.tokenizer, projector, llm_name, tokens_per=tokens_per)
    bundle.model.eval()

    data = PreparedData(args.prepared)
    records = data.records("test")
    chosen = [records[i] for i in np.linspace(0, len(records) - 1, min(args.requests, len(records))).round().astype(int)]
    requests = [time_request(bundle, bundle.tokenizer.encode(data.clip_features(r["clip_id"])), args.new_tokens, args.repeats)
                for r in chosen]

    mean_ms = {step: 1000 * float(np.mean([r["seconds"][step] for r in requests])) for step in STEPS}
    total_ms = sum(mean_ms.values())
    result = {
        "requests": len(requests),
        "new_tokens": args.new_tokens,
        "mean_ms": mean_ms,
        "total_ms": total_ms,
        "generate_ms_per_token": mean_ms["generate"] / args.new_tokens if args.new_tokens else None,
        "total_over_decode": total_ms / mean_ms["decode"],
        "llm_over_decode": (mean_ms["prefill"] + mean_ms["generate"]) / mean_ms["decode"],
        "motion_tokens_mean": float(np.mean([r["motion_tokens"] for r in requests])),
        "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in requests])),
        "clips": [r["clip_id"] for r in chosen],
        "trained_projector": projector is not None,
        "provenance": provenance(
            params=params, split="test", seed=0, llm=llm_name, tokens_per=tokens_per, tokenizer=str(args.tokenizer),
            codebook_hash=bundle.tokenizer.hash.hex(),
        ),
    }
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key not in ("provenance", "clips")}, indent=2))


if __name__ == "__main__":
    main()
