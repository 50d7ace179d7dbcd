"""Speed and peak memory of the official-size models on this machine (random weights, 256×256, CPU).

    python scripts/bench_models.py [--batch 4] [--repeats 3] [--threads 2] [--channels-last]

Measures images/s for the VAR VQVAE encoder (``quant_conv ∘ encoder``), its decoder
(``decoder ∘ post_quant_conv``), greedy multi-scale VAR quantization of the encoder output, the
MaskGIT-VQGAN encoder/decoder, and teacher-forced token likelihood — one conditional and one
unconditional pass, as the variant features need — for var16 and rarb. Each benchmark runs in a
fresh subprocess, so its reported peak resident memory (``ru_maxrss``) is its own. Weights are
random (the official files are not needed): speed and memory do not depend on their values.
Timing = best of ``--repeats`` after one warm-up, under ``torch.no_grad()``. ``--channels-last``
runs the four encoder/decoder benchmarks in NHWC layout, as the feature extractor does
(``FamilyAdapter.use_channels_last``); the other benchmarks ignore it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCHMARKS = ("var_vae_encode", "var_vae_decode", "var_greedy_quantize", "var16_likelihood",
              "maskgit_encode", "maskgit_decode", "rarb_likelihood")


def _setup(name: str, batch: int, channels_last: bool = False) -> Callable[[], object]:
    """Build the model for ``name`` and return the closure to time."""
    import torch

    def layout(*items):  # modules and tensors in the layout the benchmark asks for
        if not channels_last:
            return items
        return tuple(i.to(memory_format=torch.channels_last) if isinstance(i, torch.nn.Module)
                     else i.contiguous(memory_format=torch.channels_last) for i in items)

    from models.registry import (build_maskgit_vqgan, build_rar_generator, build_var_transformer, build_var_vae,
                                 official_variant)

    torch.manual_seed(0)
    var_cfg, rar_cfg = official_variant("var16"), official_variant("rarb")
    img = torch.rand(batch, 3, 256, 256)
    if name.startswith("var"):
        vae = build_var_vae(var_cfg["tokenizer"]).eval()
        f = vae.encode_f(img * 2 - 1)
        idx, f_hats = vae.quantize.quantize_greedy(f)
        if name == "var_vae_encode":
            _, _, x = layout(vae.encoder, vae.quant_conv, img * 2 - 1)
            return lambda: vae.encode_f(x)
        if name == "var_vae_decode":
            _, _, f_hat = layout(vae.post_quant_conv, vae.decoder, f_hats[-1])
            return lambda: vae.decode_fhat(f_hat)
        if name == "var_greedy_quantize":
            return lambda: vae.quantize.quantize_greedy(f)
        var = build_var_transformer(var_cfg["generator"], var_cfg["tokenizer"]).eval()
        labels, uncond = torch.randint(0, 1000, (batch,)), torch.full((batch,), 1000)

        def likelihood():
            x = vae.quantize.teacher_forcing_input(idx)
            return var(labels, x), var(uncond, x)
        return likelihood
    tok = build_maskgit_vqgan(rar_cfg["tokenizer"]).eval()
    codes, f_hat = tok.quantize_f(tok.encode_f(img))
    if name == "maskgit_encode":
        _, x = layout(tok.encoder, img)
        return lambda: tok.quantize_f(tok.encode_f(x))
    if name == "maskgit_decode":
        _, f_hat = layout(tok.decoder, f_hat)
        return lambda: tok.decode_fhat(f_hat)
    rar = build_rar_generator(rar_cfg["generator"], rar_cfg["tokenizer"]).eval()
    labels = rar.condition_ids(torch.randint(0, 1000, (batch,)))
    return lambda: (rar(codes, labels), rar(codes, rar.none_condition(labels)))


def _run_one(name: str, batch: int, repeats: int, threads: int, channels_last: bool, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    with torch.no_grad():
        fn = _setup(name, batch, channels_last)
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"benchmark": name, "batch": batch, "seconds": best, "images_per_s": batch / best, "peak_rss_mib": peak_mib})


def run(batch: int, repeats: int, threads: int, names: Tuple[str, ...] = BENCHMARKS, channels_last: bool = False) -> list:
    ctx = mp.get_context("spawn")
    rows = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run_one, args=(name, batch, repeats, threads, channels_last, queue))
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(f"{rows[-1]['benchmark']:22s} {rows[-1]['images_per_s']:8.2f} img/s   "
              f"({rows[-1]['seconds']:.2f} s / batch of {batch})   peak RSS {rows[-1]['peak_rss_mib']:7.0f} MiB", flush=True)
    return rows


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--channels-last", action="store_true", help="encoder/decoder benchmarks in NHWC layout")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import platform

    layout = ", channels-last" if args.channels_last else ""
    print(f"# CPU: {platform.processor() or platform.machine()}, threads={args.threads}, batch={args.batch}, 256×256, random weights{layout}")
    rows = run(args.batch, args.repeats, args.threads, tuple(args.only or BENCHMARKS), args.channels_last)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
