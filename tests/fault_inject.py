"""``python tests/fault_inject.py <train.py overrides>``: train.py with a fault injected into the training step,
for tests/test_faults.py. ``LMFORGE_TEST_FAULT`` says which: ``raise:<rank>:<step>`` (that rank raises at that
optimizer step) or ``nan:<rank>:<step>`` (that rank's loss is NaN at that step; rank ``*``: every rank).
Kept apart from the library: the processes Lightning's launchers start re-run (ddp) or import (ddp_spawn)
this file, so each rank gets the same patch."""

import os

from lmforge.utils.quiet import quiet

quiet()

import torch  # noqa: E402

from lmforge.tasks.base import TaskModule  # noqa: E402

KIND, RANK, STEP = os.environ["LMFORGE_TEST_FAULT"].split(":")
if os.environ.get("LMFORGE_TEST_FAULT_OUT"):  # a hang shows where it is: kill -USR1 <pid>
    import faulthandler
    import signal

    _stacks = open(os.path.join(os.environ["LMFORGE_TEST_FAULT_OUT"], f"stacks_{os.getpid()}"), "w")
    faulthandler.register(signal.SIGUSR1, file=_stacks, all_threads=True)
_training_step = TaskModule.training_step


def training_step(self, batch, batch_idx):
    loss = _training_step(self, batch, batch_idx)
    if self.trainer.global_step == int(STEP) and RANK in ("*", str(self.global_rank)):
        if KIND == "raise":
            if os.environ.get("LMFORGE_TEST_FAULT_OUT"):  # when the failure happened, for the test's time bound
                import time

                with open(os.path.join(os.environ["LMFORGE_TEST_FAULT_OUT"], "raised_at"), "w") as f:
                    f.write(repr(time.time()))
            raise RuntimeError(f"injected failure on rank {self.global_rank} at step {STEP}")
        loss = loss * torch.tensor(float("nan"))
    return loss


TaskModule.training_step = training_step

if __name__ == "__main__":
    import sys
    from pathlib import Path

    from lmforge.cli import train_main

    code: object = 1
    try:
        train_main()
        code = 0
    except SystemExit as e:
        code = e.code
        raise
    finally:  # each rank's exit status, for the test (Lightning's rank 0 does not report its children's)
        out = os.environ.get("LMFORGE_TEST_FAULT_OUT")
        if out:
            Path(out, f"exit_rank{os.environ.get('LOCAL_RANK', '0')}").write_text(str(code))
        sys.stdout.flush()
