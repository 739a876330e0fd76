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


def test_doctor_says_when_the_schema_is_behind_the_code(tmp_path, capsys):
    from conceptgen.cli import main

    ws = str(tmp_path / "ws")
    assert main(["--workspace", ws, "db", "upgrade", "0001"]) == 0
    assert main(["--workspace", ws, "doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  store:" in out and "schema at 0001" in out and "conceptgen db upgrade" in out
    assert main(["--workspace", ws, "db", "upgrade"]) == 0
    assert main(["--workspace", ws, "doctor"]) == 0
    assert "doctor: no problems" in capsys.readouterr().out


def test_only_a_store_that_went_away_is_an_outage(tmp_path):
    """A database file that cannot be opened is an outage (one line: the store, and that
    rerunning resumes); a wrong statement is not (it stays a bug with its traceback)."""
    import pytest
    from sqlalchemy.exc import DBAPIError

    from conceptgen.db import is_outage, make_engine, outage_error

    gone_url = f"sqlite:///{tmp_path / 'no-such-folder' / 'concepts.db'}"
    with pytest.raises(DBAPIError) as gone:
        make_engine(gone_url).connect()
    assert is_outage(gone.value)
    line = str(outage_error(gone_url, gone.value))
    assert line.startswith(f"lost the database at {gone_url} (") and line.endswith("run the same command again to resume")
    with pytest.raises(DBAPIError) as wrong, make_engine(f"sqlite:///{tmp_path / 'ok.db'}").connect() as conn:
        conn.exec_driver_sql("SELECT * FROM no_such_table")
    assert not is_outage(wrong.value)
