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

from trainer.telemetry import flops_per_token


# Dense bf16 tensor-core peaks (TFLOP/s) by device name, for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def _time(fn, reps: int) -> float:
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps


def run(hidden: int = 256, layers: int = 4, heads: int = 8, vocab: int = 8192, seq: int = 256, batch: int = 8,
        rounds: int = 5, reps: int = 3, dtype: str = "fp32", device: str = "cpu", reference: bool = True) -> dict:
    from trainer.config import ModelConfig
    from trainer.model.bloom import BloomForCausalLM, init_parameters

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    model_cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads, vocab_size=vocab)
    ours = BloomForCausalLM(model_cfg, padded_vocab_size=vocab)
    init_parameters(ours, model_cfg, seed=0)
    hf = None
    if reference:
        from transformers import BloomConfig
        from transformers import BloomForCausalLM as HFBloom
        hf = HFBloom(BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads))
        missing, unexpected = hf.load_state_dict({"transformer." + k: v for k, v in ours.state_dict().items()},
                                                 strict=False)
        assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
        hf.tie_weights()
        hf = hf.to(device, torch_dtype).train()
    ours = ours.to(device, torch_dtype).train()
    ids = torch.randint(0, vocab, (batch, seq), device=device)

    def step_hf():
        hf(ids, labels=ids).loss.backward()

    # Next-token labels, shifted on the label side (no copy of the (B, T, V) logits), as transformers does.
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)

    def step_ours():
        logits = ours(ids)  # (B, T, V)
        torch.nn.functional.cross_entropy(logits.view(-1, vocab).float(), labels.view(-1)).backward()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    steps = {"ours": step_ours, **({"transformers": step_hf} if hf is not None else {})}
    for fn in steps.values():  # warm-up
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():  # alternate, so that machine noise hits both alike
            sync()
            times[name].append(_time(lambda: (fn(), sync()), reps))
    tokens = batch * seq
    result = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    n_params = sum(p.numel() for p in ours.parameters())
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    flops = flops_per_token(n_params, layers, hidden, seq)
    tflops = {name: tps * flops / 1e12 for name, tps in result.items()}
    peak = peak_tflops(device_name) if dtype == "bf16" else None
    return {
        "benchmark": "model_throughput",
        "config": {"hidden": hidden, "layers": layers, "heads": heads, "vocab": vocab, "seq": seq, "batch": batch,
                   "dtype": dtype, "device": device_name, "threads": torch.get_num_threads(),
                   "parameters": n_params},
        "tokens_per_second": result,
        "tflops": tflops,
        "mfu": {name: t / peak for name, t in tflops.items()} if peak else None,
        "ratio_ours_vs_transformers": result["ours"] / result["transformers"] if hf is not None else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("hidden", 256), ("layers", 4), ("heads", 8), ("vocab", 8192), ("seq", 256),
                          ("batch", 8), ("rounds", 5), ("reps", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="default hidden/layers/heads/vocab/seq from a preset "
                                                           "(e.g. bloom-560m); explicit options still win")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip transformers (e.g. where it is not installed)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    name = parser.parse_known_args(argv)[0].preset
    if name:
        from trainer.config import preset
        cfg = preset(name)
        parser.set_defaults(hidden=cfg.model.hidden_size, layers=cfg.model.num_layers,
                            heads=cfg.model.num_attention_heads, vocab=cfg.padded_vocab_size, seq=cfg.train.seq_length)
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json")
    args.pop("preset")
    result = run(**args)
    if as_json:
        print(json.dumps(result))
    else:
        c = result["config"]
        print(f"model throughput (fwd+bwd), {c['parameters']:,} params, batch {c['batch']} x seq {c['seq']}, "
              f"{c['dtype']} on {c['device']} ({c['threads']} threads)")
        for name, tps in result["tokens_per_second"].items():
            mfu = f", MFU {result['mfu'][name]:.1%}" if result["mfu"] else ""
            print(f"  {name:<13} {tps:>12,.0f} tokens/s  {result['tflops'][name]:8.2f} TFLOP/s{mfu}")
        if result["ratio_ours_vs_transformers"] is not None:
            print(f"  ratio ours / transformers: {result['ratio_ours_vs_transformers']:.2f}")
    return result


if __name__ == "__main__":
    main()
