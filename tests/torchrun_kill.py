"""`torchrun ... tests/torchrun_kill.py <overrides>`: the harvest app with one rank killed (SIGKILL, no
chance to clean up) right after it wrote its KILL_AFTER-th shard file, before store.rank<r>.json
lists it. tests/test_distributed.py checks that the launch fails and that a re-run resumes."""

import os
import signal

from reasondiff.harvest import store as store_io

if int(os.environ["RANK"]) == int(os.environ["KILL_RANK"]):
    original, written = store_io.write_shard, []

    def write_then_die(*args, **kwargs):
        entry = original(*args, **kwargs)
        written.append(entry)
        if len(written) == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return entry

    store_io.write_shard = write_then_die

from reasondiff.harvest.__main__ import main  # noqa: E402

main()
