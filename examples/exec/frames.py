#!/usr/bin/env python3
"""An item processed frame by frame, for jobvisor's `exec` executor.

The item names a clip and its frame count, e.g. "intro.mp4:40". The script
"encodes" one frame at a time and saves a JSON checkpoint every few frames;
on SIGTERM (immediate pause, cancel, server shutdown) it saves where it is
and exits at once, so the next attempt resumes at that frame.

    jobvisor start --name clips --executor exec --concurrency 2 \
      --item intro.mp4:40 --item outro.mp4:25 \
      --param command=python3 --param 'args=["examples/exec/frames.py"]'

Exit codes: 0 done; 100 (a permanent failure, not retried) when the item
is malformed. Settings (environment): FRAME_SECONDS (default 0.05),
EXEC_LOG (optional file: one line per execution "index attempt from-frame").
"""
import json
import os
import signal
import sys
import time

PERMANENT_FAILURE = 100


def say(line):
    print(line, flush=True)


def main():
    item = sys.stdin.read()
    try:
        clip, frames = item.rsplit(":", 1)
        frames = int(frames)
    except ValueError:
        say(f"malformed item {item!r}: expected <clip>:<frames>")
        return PERMANENT_FAILURE

    checkpoint = os.environ.get("JOBVISOR_CHECKPOINT")
    frame = json.loads(checkpoint)["frame"] if checkpoint else 0
    attempt = os.environ["JOBVISOR_ATTEMPT"]
    log = os.environ.get("EXEC_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.environ['JOBVISOR_ITEM_INDEX']} {attempt} {frame}\n")
    say(f"encoding {clip} from frame {frame} of {frames} (attempt {attempt})")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    pause = float(os.environ.get("FRAME_SECONDS", "0.05"))
    while frame < frames:
        if stop:
            say(f"@checkpoint {json.dumps({'frame': frame})}")
            say(f"stopped at frame {frame}")
            return 0
        time.sleep(pause)
        frame += 1
        if frame % 5 == 0 or frame == frames:
            say(f"@checkpoint {json.dumps({'frame': frame})}")
            say(f"@progress {frame}/{frames}")
    say(f"@result {clip}: {frames} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
