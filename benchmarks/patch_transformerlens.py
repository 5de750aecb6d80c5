"""attnviz's activation-patching head map against TransformerLens's, on the same SmolLM2 weights.

TransformerLens is not a dependency of attnviz (it pins other versions than inseq needs): it gets a
throwaway venv of its own, and reads SmolLM2's weights from a plain Hugging Face folder that this
script exports from attnviz's own load (the GGUF file de-quantised to float32), so both sides run
the very same numbers. Nothing is downloaded but the pip packages:

    python3 -m venv /tmp/tlvenv
    /tmp/tlvenv/bin/pip install torch==2.13.0     # first: the CPU wheel (a bare torch pulls CUDA)
    /tmp/tlvenv/bin/pip install transformer_lens  # took transformer_lens 4.3.0, transformers 5.25.0
    PYTHONPATH=src .venv/bin/python benchmarks/patch_transformerlens.py export /tmp/smollm2-hf
    PYTHONPATH=src .venv/bin/python benchmarks/patch_transformerlens.py compare /tmp/smollm2-hf \\
        --tl-python /tmp/tlvenv/bin/python

`compare` (attnviz's venv) first checks that the exported folder gives attnviz's logits, then, for
each of `--rounds` rounds, runs `tl` (this same file, under the TransformerLens venv) for one map
and then attnviz's `patch` for one, interleaved, on `--threads` torch threads (1 by default: two
threads spin-wait and run 5-10x slower when the 2 cores are shared), with `uptime` after each.
It prints one JSON object: each round's times, the largest differences between the two [30, 9]
maps (raw logit difference after patching each head) and between the clean and corrupt baselines,
and how far each TransformerLens forward is from Hugging Face's (and attnviz's) logits.

`tl` (TransformerLens's venv) wraps the exported model with `TransformerBridge.boot_transformers`
(TransformerLens 4 has no HookedTransformer; the bridge runs Hugging Face's modules, under eager
attention, with hooks), feeds the same 14 token ids as attnviz (no BOS: `to_tokens` would prepend
one and change the input), and times `run_with_cache` on the clean text, the corrupt baseline and
`get_act_patch_attn_head_out_all_pos` (270 hooked forwards of the corrupt text, the `hook_z` slice
of one head replaced by the clean run's). With `--compat` it then also runs the map once under
`enable_compatibility_mode()` (HookedTransformer's folded and centred weights). It writes the maps,
baselines, times and logits to an .npz.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
ANSWER, WRONG = "Mary", "John"


def export(folder: str) -> None:
    """SmolLM2 as attnviz loads it (de-quantised GGUF, with its LM head), saved as safetensors."""
    from attnviz.heads.patching import for_patching
    from attnviz.models.loading import load_model

    loaded = for_patching(load_model("smollm2"))
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    print(f"saved {loaded.name} ({loaded.model.config.architectures[0]}, float32) to {folder}")


# ---------------------------------------------------------------- TransformerLens side (its venv)


def _one_token(tok, word: str) -> int:
    ids = tok(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{word!r} is {len(ids)} tokens"
    return int(ids[0])


def _tl_map(bridge, clean, corrupt, metric):
    """One full TransformerLens head map, as its tutorials run it: clean cache, corrupt baseline, sweep."""
    import torch
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    start = time.perf_counter()
    clean_logits, cache = bridge.run_with_cache(clean)
    base = (float(metric(clean_logits)), float(metric(bridge(corrupt))))
    sweep = time.perf_counter()
    out = get_act_patch_attn_head_out_all_pos(bridge, corrupt, cache, metric)
    end = time.perf_counter()
    assert isinstance(out, torch.Tensor)
    return out.float().numpy(), base, end - start, end - sweep


def tl(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.weights)
    hf = AutoModelForCausalLM.from_pretrained(args.weights, dtype=torch.float32, attn_implementation="sdpa")
    hf.eval()
    clean = tok(CLEAN, return_tensors="pt")["input_ids"]
    corrupt = tok(CORRUPT, return_tensors="pt")["input_ids"]
    a, w = _one_token(tok, ANSWER), _one_token(tok, WRONG)
    saved = {"hf_sdpa_logits": hf(clean).logits[0].numpy()}  # before the bridge switches it to eager
    bridge = TransformerBridge.boot_transformers(args.weights, hf_model=hf, tokenizer=tok, device="cpu")
    bridge.eval()
    saved["hf_eager_logits"] = hf(clean).logits[0].numpy()
    saved["tl_logits"] = bridge(clean)[0].numpy()

    def metric(logits):
        return logits[0, -1, a] - logits[0, -1, w]

    times, sweeps = [], []
    for _ in range(args.rounds):
        patched, base, total, sweep = _tl_map(bridge, clean, corrupt, metric)
        times.append(total)
        sweeps.append(sweep)
    saved.update(tl_patched=patched, tl_clean=base[0], tl_corrupt=base[1], tl_s=times, tl_sweep_s=sweeps)
    if args.compat:
        bridge.enable_compatibility_mode(disable_warnings=True)
        saved["compat_logits"] = bridge(clean)[0].numpy()
        patched, base, total, _ = _tl_map(bridge, clean, corrupt, metric)
        saved.update(compat_patched=patched, compat_clean=base[0], compat_corrupt=base[1], compat_s=total)
    versions = {
        "transformer_lens": _dist_version("transformer_lens"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    np.savez(args.out, ids=np.array([a, w]), tokens=clean[0].numpy(), versions=json.dumps(versions), **saved)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


# ---------------------------------------------------------------- attnviz side (attnviz's venv)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _attnviz_rounds(loaded, rounds: int):
    from attnviz.heads.patching import patch

    best, result = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        result = patch(CLEAN, CORRUPT, loaded, answer=ANSWER, wrong=WRONG)
        best = min(best, time.perf_counter() - start)
    return result, best


def _export_check(loaded, folder: str):
    """Largest logit difference on the clean text between attnviz's model and the exported folder, and
    attnviz's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = loaded.tokenizer(CLEAN, return_tensors="pt")
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    with torch.inference_mode():
        ours, theirs = loaded.model(**ids).logits[0], plain.eval()(**ids).logits[0]
    return float((ours - theirs).abs().max()), ours.numpy()


def _top(patched, clean: float, corrupt: float, k: int = 5) -> list[str]:
    import numpy as np

    effect = (patched - corrupt) / (clean - corrupt)
    order = np.argsort(-np.abs(effect), axis=None, kind="stable")[:k]
    return [f"L{i // patched.shape[1]}H{i % patched.shape[1]} {effect.flat[i]:+.3f}" for i in order]


def compare(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from attnviz.heads.patching import for_patching
    from attnviz.models.loading import load_model

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    loaded = for_patching(load_model("smollm2"))
    export_diff, ours_logits = _export_check(loaded, args.weights)
    out = Path(args.out)
    load = {"before": _uptime()}
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    tl_s, tl_sweep_s, ours_s = [], [], []
    for i in range(args.rounds):  # interleaved: TransformerLens's map, then attnviz's, each round
        last = i == args.rounds - 1
        cmd = [args.tl_python, __file__, "tl", args.weights, "--out", str(out), "--rounds", "1",
               "--threads", str(args.threads), *(["--compat"] if args.compat and last else [])]  # fmt: skip
        subprocess.run(cmd, check=True, env=env)
        with np.load(out) as tl_round:
            tl_s.append(float(tl_round["tl_s"][0]))
            tl_sweep_s.append(float(tl_round["tl_sweep_s"][0]))
        load[f"round {i + 1}, between"] = _uptime()
        patch_result, seconds = _attnviz_rounds(loaded, 1)
        ours_s.append(seconds)
        load[f"round {i + 1}, after"] = _uptime()
    tl_npz = np.load(out)
    ours, tl_map = patch_result.patched, tl_npz["tl_patched"]
    row = {
        "versions": json.loads(str(tl_npz["versions"])),
        "export_vs_attnviz_logits": export_diff,
        "hf_sdpa_vs_attnviz_logits": float(np.abs(tl_npz["hf_sdpa_logits"] - ours_logits).max()),
        "hf_eager_vs_attnviz_logits": float(np.abs(tl_npz["hf_eager_logits"] - ours_logits).max()),
        "tl_vs_attnviz_logits": float(np.abs(tl_npz["tl_logits"] - ours_logits).max()),
        "attnviz_s": [round(t, 2) for t in ours_s],
        "tl_s": [round(t, 2) for t in tl_s],
        "tl_sweep_only_s": [round(t, 2) for t in tl_sweep_s],
        "tl_vs_attnviz_time_of_minima": round(min(tl_s) / min(ours_s), 2),
        "clean": [patch_result.clean, float(tl_npz["tl_clean"])],
        "corrupt": [patch_result.corrupt, float(tl_npz["tl_corrupt"])],
        "max_abs_diff_patched": float(np.abs(ours - tl_map).max()),
        "max_abs_diff_baselines": max(
            abs(patch_result.clean - float(tl_npz["tl_clean"])),
            abs(patch_result.corrupt - float(tl_npz["tl_corrupt"])),
        ),
        "top_attnviz": _top(ours, patch_result.clean, patch_result.corrupt),
        "top_tl": _top(tl_map, float(tl_npz["tl_clean"]), float(tl_npz["tl_corrupt"])),
        "load": load,
    }
    if args.compat:
        centred = tl_npz["compat_logits"] - tl_npz["compat_logits"].mean(-1, keepdims=True)
        ours_c = ours_logits - ours_logits.mean(-1, keepdims=True)  # center_unembed shifts each row
        row["compat_vs_attnviz_logits_centred"] = float(np.abs(centred - ours_c).max())
        row["compat_max_abs_diff_patched"] = float(np.abs(ours - tl_npz["compat_patched"]).max())
        row["compat_clean_corrupt"] = [float(tl_npz["compat_clean"]), float(tl_npz["compat_corrupt"])]
        row["compat_s"] = round(float(tl_npz["compat_s"]), 2)
    print(json.dumps(row, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("export").add_argument("folder")
    for name in ("tl", "compare"):
        p = sub.add_parser(name)
        p.add_argument("weights", help="the folder `export` wrote")
        p.add_argument("--out", default="/tmp/patch_transformerlens.npz")
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--threads", type=int, default=1, help="torch threads (2 spin-wait on a busy machine)")
        p.add_argument("--compat", action="store_true", help="also HookedTransformer-style folded weights")
        if name == "compare":
            p.add_argument("--tl-python", required=True, help="the TransformerLens venv's python")
    args = parser.parse_args()
    if args.what == "export":
        export(args.folder)
    elif args.what == "tl":
        tl(args)
    else:
        compare(args)


if __name__ == "__main__":
    sys.exit(main())
