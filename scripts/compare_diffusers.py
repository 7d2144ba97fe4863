"""Times diffusers on the work kosmosg_bench times (random SD1.5-size weights, no download):
UNet forward at 64x64 latents, batch 1 and the CFG batch 2, and the VAE decode to 512x512.
Prints the figures in kosmosg_bench's format. Run by scripts/compare_diffusers.sh."""
import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel


def load_config(path):
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


def report(name, runs, body):
    body()  # warm-up, as kosmosg_bench
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        body()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{name}: {statistics.median(times):.3f} s (min {times[0]:.3f}, max {times[-1]:.3f}, "
          f"{runs} runs, {torch.get_num_threads()} threads)", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="configs/sd15")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--only", nargs="*", default=["unet_b1", "unet_b2", "vae_decode"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.inference_mode():
        if {"unet_b1", "unet_b2"} & set(args.only):
            unet = UNet2DConditionModel.from_config(load_config(f"{args.configs}/unet.json")).eval()
            for batch in (1, 2):
                name = f"unet_b{batch}"
                if name not in args.only:
                    continue
                x = torch.randn(batch, 4, 64, 64)
                t = torch.full((1,), 500, dtype=torch.long)
                ctx = torch.randn(batch, 77, 768)
                report(name, args.runs, lambda: unet(x, t, encoder_hidden_states=ctx))
            del unet
        if "vae_decode" in args.only:
            vae = AutoencoderKL.from_config(load_config(f"{args.configs}/vae.json")).eval()
            z = torch.randn(1, 4, 64, 64)
            report("vae_decode", args.runs, lambda: vae.decode(z))
    print(f"peak_rss after all: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB", flush=True)


if __name__ == "__main__":
    main()
