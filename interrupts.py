"""Ctrl-C or SIGTERM while a stage starts (torch loading, the data being read): one line and exit 1,
not a 40-line traceback. Imports nothing but the standard library, so a stage calls it first:

    import interrupts; interrupts.quiet_until_ready()      # the first lines of a stage run as a script

An exception raised inside torch's own import turns into another one, so the process leaves at once
(os._exit). A stage that saves on a signal (train_drl.py's StopRequest) installs its handlers later.
"""
import os
import signal

CLEANUPS = []  # called before the process leaves on a signal: runtime.clean_up (temporary files, empty folders)


def quiet_until_ready():
    for signum, name in ((signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")):
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
            signal.signal(signum, lambda *_, name=name: leave(name))


def leave(name):
    for clean in CLEANUPS:
        try:
            clean()
        except Exception:  # leaving anyway; what could not be cleaned is named NAME.PID.drl-tmp
            pass
    os.write(2, f"interrupted ({name})\n".encode())
    os._exit(1)
