"""How well the shipped text-to-image model draws what it is asked: per concept, the share of samples the
judge calls by the concept's name, over its unlearning prompts and over its held-out paraphrases.

    python benchmarks/text_to_image_base.py [--guidance 4] [--steps 20] [--n 32]
writes benchmarks/results/text_to_image_base.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    from lethe.models.judge import Judge
    from lethe.models.text_generator import TextToImageGenerator
    from lethe.tasks.concept_sets import load_concept_set
    from lethe.tasks.runtime import configure_torch
    from lethe.tasks.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=32, help="samples per concept and prompt kind")
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_to_image_base.json"))
    args = parser.parse_args(argv)
    settings = load_settings(args.params)
    configure_torch(settings.runtime)
    generator = TextToImageGenerator.from_folder(settings.paths.text_to_image)
    judge = Judge.load(settings.paths.judge)
    concepts = load_concept_set(settings.paths.text_to_image / "concepts.yaml")
    start, rows = time.time(), []
    for c in concepts.names:
        row = {"concept": c}
        for kind, prompts in (("prompts", concepts[c].prompts), ("held_out", concepts[c].held_out)):
            per_prompt = max(1, args.n // len(prompts))
            images = generator.sample(list(prompts), per_prompt, args.seed, args.steps, args.guidance)
            row[kind] = round(float((judge.classify(images) == judge.concepts.index(c)).float().mean()), 4)
            row[f"{kind}_n"] = len(images)
        rows.append(row)
        print(row, flush=True)
    summary = {
        "command": "python benchmarks/text_to_image_base.py " + " ".join(argv or sys.argv[1:]),
        "guidance": args.guidance,
        "steps": args.steps,
        "seed": args.seed,
        "mean_prompts": round(sum(r["prompts"] for r in rows) / len(rows), 4),
        "mean_held_out": round(sum(r["held_out"] for r in rows) / len(rows), 4),
        "seconds": round(time.time() - start, 1),
        "concepts": rows,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print({k: v for k, v in summary.items() if k != "concepts"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
