"""`fewstep.samplers` needs nothing but torch: importing it must not pull in diffusers."""

import subprocess
import sys


def test_samplers_do_not_import_diffusers():
    code = ("import sys, fewstep.samplers, fewstep.samplers.boss, fewstep.samplers.learned, "
            "fewstep.samplers.spec, fewstep.samplers.evaluation, fewstep.samplers.discrete.lsd; "
            "print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
