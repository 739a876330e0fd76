"""`conceptgen db upgrade|downgrade|current` through the real console entry point."""
from __future__ import annotations

import subprocess
import sys


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "conceptgen", *args], capture_output=True, text=True, cwd=cwd)


def test_db_commands_round_trip(tmp_path):
    ws = str(tmp_path / "ws")
    cur = _cli("--workspace", ws, "db", "current")
    assert cur.returncode == 0, cur.stderr
    assert "base" in cur.stdout
    up = _cli("--workspace", ws, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert "(head)" in _cli("--workspace", ws, "db", "current").stdout
    down = _cli("--workspace", ws, "db", "downgrade")
    assert down.returncode == 0 and "base" in down.stdout


def test_db_upgrade_to_unknown_revision_is_one_line_error(tmp_path):
    res = _cli("--workspace", str(tmp_path / "ws"), "db", "upgrade", "nonexistent")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
