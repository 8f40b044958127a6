"""The cheap paths stay cheap: building the entry scripts' parsers and eval.py's missing-files
message load neither torch nor transformers (issue 13/14: seconds before a one-line answer)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers")


def _loaded_heavy(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_router_arguments_module_is_light():
    assert _loaded_heavy("import prp.route.run, prp.route.serve") == []


def test_eval_missing_files_message_loads_no_model_code():
    code = ("import eval as e\n"
            "try:\n    e.main(['--bench', 'mathvista'])\n"
            "except Exception as exc:\n    assert 'its files are not part of this project' in str(exc), exc\n"
            "else:\n    raise AssertionError('no error')")
    assert _loaded_heavy(code) == []
