"""What a result's provenance says about the machine: the CPU model and the SIMD path torch's kernels take."""

import json
import os
import subprocess
import sys

import torch

from lmrepro import provenance

SNIPPET = "import json; from lmrepro.provenance import device_info; print(json.dumps(device_info()))"


def test_device_info_names_cpu_and_simd_path():
    info = provenance.device_info()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):
        assert info["cpu_model"] and info["cpu_model"] in open("/proc/cpuinfo").read()


def test_lowered_simd_path_is_recorded():
    # ATEN_CPU_CAPABILITY=default makes torch's CPU kernels round like a CPU without vector extensions; a run made
    # so must say it (the cross-CPU rerun in the README uses this to stand in for another CPU type).
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["cpu_capability"] == "DEFAULT"
