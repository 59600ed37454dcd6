"""rstitch_eval sits on rstitch_core: importing it loads neither ray nor grpc (nor matplotlib until a plot)."""

import subprocess
import sys


def test_eval_imports_neither_ray_nor_grpc():
    code = ("import pkgutil, importlib, sys, rstitch_eval\n"
            "for m in pkgutil.walk_packages(rstitch_eval.__path__, 'rstitch_eval.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'grpc', 'matplotlib')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
