import subprocess
import sys


def test_core_imports_neither_ray_nor_grpc():
    code = ("import pkgutil, importlib, sys, rstitch_core\n"
            "for m in pkgutil.walk_packages(rstitch_core.__path__, 'rstitch_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'grpc'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
