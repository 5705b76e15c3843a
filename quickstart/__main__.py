"""`python -m quickstart` (what `scripts/run` runs): the whole edge story, then a summary and pictures.

Ctrl-C (SIGINT) or SIGTERM at any point stops everything the story started."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from quickstart.infra import REPO
from quickstart.story import STEPS, Options, Story, StoryError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / ".quickstart" / "out",
                        help="folder for the pictures and figures.json (default .quickstart/out)")
    parser.add_argument("--work", type=Path, default=REPO / ".quickstart" / "run", metavar="DIR",
                        help="folder for everything the story starts (broker, registry, TPM, agent), its keys, "
                             "state and logs; emptied at the next start, so it must be new, empty or one the "
                             "quickstart made (default .quickstart/run)")
    parser.add_argument("--drive", type=float, default=20.0, metavar="SECONDS",
                        help="seconds of live driving shown before the outage (default 20)")
    parser.add_argument("--outage", type=float, default=20.0, metavar="SECONDS",
                        help="how long the broker stays away (default 20)")
    parser.add_argument("--non-interactive", action="store_true",
                        help="for CI and logs: plain output, no terminal styling (the same story and checks)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="run only the first N steps, then stop everything (e.g. --steps 2: broker, registry, "
                             "TPM, podman service, keys and identity)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    story = Story(Options(work=args.work.resolve(), out=args.out.resolve(), drive_s=args.drive,
                          outage_s=args.outage, interactive=not args.non_interactive))
    started = time.monotonic()
    print("edge-agent quickstart: the whole edge story on this machine (Ctrl-C stops everything)", flush=True)
    code = 0
    try:
        if args.steps is not None:
            story.run(last_step=max(1, min(args.steps, STEPS)))
        else:
            story.run()
        print(f"\nquickstart finished in {time.monotonic() - started:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything the quickstart started", flush=True)
        code = 130
    except StoryError as exc:
        print(f"\nquickstart FAILED: {exc}", file=sys.stderr, flush=True)
        code = 1
    except Exception as exc:  # anything unexpected: say what, still clean up
        print(f"\nquickstart FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        story.cleanup()
        print(f"stopped everything the quickstart started (work folder {story.work})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
