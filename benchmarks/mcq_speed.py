"""Shared-prefix vs naive MCQ scoring speed (not a test).

Same model, same questions (4 choices each), same batch size: the naive path runs every
choice's whole sequence (vision tower, image tokens, question, choice) from scratch; the
shared-prefix path encodes image + question once per question and scores the four choices on a
copy of the KV cache. Both are timed over the whole set, alternating (naive, shared, naive, ...),
and the script prints the median times, the speed-up (goal >= 2x) and the largest score
difference between the two paths.

The model is a SmolVLM (Idefics3 architecture: SigLIP vision tower, pixel shuffle, Llama text
model) built from a config with random weights — small enough for a CPU, large enough that
the prefix dominates as it does in real VLMs: 128x128 images → 64 image tokens (as one SmolVLM
512-pixel tile), text width 512,
8 layers (34M parameters). Tokenizer (byte-level BPE with merges learnt on the set's words, so a choice is 1-2
tokens as with a real tokenizer) and processor are built locally by
:func:`craft_plugin.mcq.tiny.build_tiny_smolvlm`; no download.

    python benchmarks/mcq_speed.py [--questions 24] [--repeats 3] [--threads N] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the model's)")
    ap.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    args = ap.parse_args()
    if args.dry_run:
        print(f"mcq_speed.py --dry-run: arguments ok (device {args.device}, dtype {args.dtype or 'default'})")
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from craft_plugin.mcq.data import load_image, load_mcq
    from craft_plugin.mcq.models import load_adapter
    from craft_plugin.mcq.scenes import make_scene_mcq
    from craft_plugin.mcq.tiny import build_tiny_smolvlm
    from craft_plugin.mcq.scoring import score_questions

    with tempfile.TemporaryDirectory(prefix="mcq-speed-") as tmp:
        root = Path(tmp)
        build_tiny_smolvlm(root / "vlm", image_size=args.image_size, width=args.width, layers=args.layers)
        data = load_mcq(make_scene_mcq(root / "set", args.questions, seed=0, image_size=args.image_size))
        adapter = load_adapter(str(root / "vlm"), device=args.device, dtype=args.dtype)
        questions = data.questions
        n_params = sum(p.numel() for p in adapter.module.parameters())
        prefix = adapter.encode(load_image(questions[0].image), questions[0].question)
        choice_tokens = [len(adapter.choice_ids(c)) for q in questions for c in q.choices]

        score_questions(adapter, questions[:2], batch_size=args.batch_size)  # warm-up
        score_questions(adapter, questions[:2], naive=True, batch_size=args.batch_size)
        times: dict[str, list[float]] = {"naive": [], "shared": []}
        results = {}
        for _ in range(args.repeats):
            for name in ("naive", "shared"):
                start = time.perf_counter()
                results[name] = score_questions(adapter, questions, naive=name == "naive", batch_size=args.batch_size)
                times[name].append(time.perf_counter() - start)
        diff = max(
            abs(a - b) for qa, qb in zip(results["naive"], results["shared"]) for a, b in zip(qa.sums, qb.sums)
        )

    naive, shared = statistics.median(times["naive"]), statistics.median(times["shared"])
    cpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or platform.machine()
    print(f"machine: {platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: SmolVLM from config, {n_params / 1e6:.1f}M parameters (text width {args.width}, {args.layers} layers, "
          f"{args.image_size}x{args.image_size} images); prompt {prefix.length} tokens, "
          f"choices {min(choice_tokens)}-{max(choice_tokens)} tokens (mean {statistics.mean(choice_tokens):.1f})")
    print(f"data: {len(questions)} questions x 4 choices, batch size {args.batch_size}, {args.repeats} repeats (median)")
    print(f"naive         {naive:7.3f} s  ({naive / len(questions) * 1e3:6.1f} ms/question)")
    print(f"shared prefix {shared:7.3f} s  ({shared / len(questions) * 1e3:6.1f} ms/question)")
    print(f"speed-up {naive / shared:.2f}x (goal >= 2x); max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
