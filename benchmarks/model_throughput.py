"""Forward+backward tokens/s of our BLOOM at TP=PP=DP=1 vs ``transformers.BloomForCausalLM``.

Same config, same weights (ours are imported from the HF model), same batch, same dtype, same threads.
The two models are timed in alternation, several rounds, and the median of each is compared, so that a
noisy machine slows both alike. Run: ``python -m benchmarks.model_throughput [--hidden 256 ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _time(fn, reps: int) -> float:
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps


def run(hidden: int = 256, layers: int = 4, heads: int = 8, vocab: int = 8192, seq: int = 256, batch: int = 8,
        rounds: int = 5, reps: int = 3, dtype: str = "fp32", device: str = "cpu") -> dict:
    from transformers import BloomConfig
    from transformers import BloomForCausalLM as HFBloom

    from trainer.config import ModelConfig
    from trainer.model.bloom import BloomForCausalLM

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    hf = HFBloom(BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads)).to(device, torch_dtype)
    ours = BloomForCausalLM(ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
                                        vocab_size=vocab), padded_vocab_size=vocab)
    ours.load_state_dict({k.removeprefix("transformer."): v for k, v in hf.state_dict().items()
                          if k != "lm_head.weight"})
    ours = ours.to(device, torch_dtype)
    hf.train(), ours.train()
    ids = torch.randint(0, vocab, (batch, seq), device=device)

    def step_hf():
        hf(ids, labels=ids).loss.backward()

    def step_ours():
        logits = ours(ids)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1)).backward()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in (step_hf, step_ours):  # warm-up
        fn()
    sync()
    times = {"ours": [], "transformers": []}
    for _ in range(rounds):
        for name, fn in (("ours", step_ours), ("transformers", step_hf)):
            sync()
            times[name].append(_time(lambda: (fn(), sync()), reps))
    tokens = batch * seq
    result = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    n_params = sum(p.numel() for p in ours.parameters())
    return {
        "benchmark": "model_throughput",
        "config": {"hidden": hidden, "layers": layers, "heads": heads, "vocab": vocab, "seq": seq, "batch": batch,
                   "dtype": dtype, "device": device, "threads": torch.get_num_threads(), "parameters": n_params},
        "tokens_per_second": result,
        "ratio_ours_vs_transformers": result["ours"] / result["transformers"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 256), ("layers", 4), ("heads", 8), ("vocab", 8192), ("seq", 256),
                          ("batch", 8), ("rounds", 5), ("reps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    result = run(**args)
    if as_json:
        print(json.dumps(result))
    else:
        c = result["config"]
        print(f"model throughput (fwd+bwd), {c['parameters']:,} params, batch {c['batch']} x seq {c['seq']}, "
              f"{c['dtype']} on {c['device']} ({c['threads']} threads)")
        for name, tps in result["tokens_per_second"].items():
            print(f"  {name:<13} {tps:>12,.0f} tokens/s")
        print(f"  ratio ours / transformers: {result['ratio_ours_vs_transformers']:.2f}")
    return result


if __name__ == "__main__":
    main()
