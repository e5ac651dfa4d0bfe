"""Stop early, with advice, when the Python that `make` would use is too old for lora-np.

Run by every Makefile target before it touches .venv. It must itself run on old Pythons, so it
uses nothing newer than Python 3.6 (f-strings). It also removes a .venv that another Python made
(for instance one left half-built by Python 3.10), so `make PYTHON=python3.11 test` never
reuses it silently.

    python tools/check_python.py .venv
"""

import os
import re
import shutil
import sys

NEEDED = (3, 11)


def venv_python_version(venv):
    """The 'major.minor' recorded in venv/pyvenv.cfg, or None when there is no readable venv."""
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", text, re.MULTILINE)
    return "{}.{}".format(*match.groups()) if match else None


def main():
    venv = sys.argv[1] if len(sys.argv) > 1 else ".venv"
    mine = "{}.{}".format(*sys.version_info[:2])
    if sys.version_info[:2] < NEEDED:
        sys.stderr.write(
            f"lora-np needs Python {NEEDED[0]}.{NEEDED[1]} or newer; `{sys.executable}` is Python {mine}.\n"
            "Install Python 3.11, 3.12 or 3.13 and run, for example:\n"
            "    make PYTHON=python3.11 test\n"
        )
        return 1
    recorded = venv_python_version(venv)
    exists = os.path.isdir(venv)
    if exists and recorded != mine:
        reason = f"it was made by Python {recorded}" if recorded else "it is incomplete"
        print(f"removing {venv}: {reason}, and make runs Python {mine} now")
        shutil.rmtree(venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
