"""Local state that several processes and threads share (calltune.core.db)."""
from __future__ import annotations

import threading

from calltune.core.db import connect_sqlite


def test_connections_that_open_a_new_file_together_all_get_it_in_wal_mode(tmp_path):
    """Servers starting together open the practice history's new file at once; SQLite answers all but one of their
    switches to WAL "database is locked" without waiting. Each round starts four connections at one barrier."""
    errors, modes = [], []
    for round_ in range(50):
        path, start = tmp_path / f"{round_}.db", threading.Barrier(4)

        def open_it(path=path, start=start):
            start.wait()
            try:
                db = connect_sqlite(path, any_thread=True)
                modes.append(db.execute("PRAGMA journal_mode").fetchone()[0])
                db.close()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and modes == ["wal"] * 200
