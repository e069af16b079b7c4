"""Owner-only outputs and the append-only, PHI-free audit log."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from huatuo_cli import audit
from huatuo_cli.privacy import append_line, private_dir, write_private


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_files_and_dirs_ignore_a_permissive_umask(tmp_path):
    os.chmod(tmp_path, 0o755)
    old = os.umask(0)
    try:
        folder = private_dir(tmp_path / "a" / "b")
        f1 = write_private(folder / "r.txt", "x")
        append_line(folder / "l.jsonl", "{}")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o700 and mode(folder) == 0o700
    assert mode(f1) == 0o600 and mode(folder / "l.jsonl") == 0o600
    assert mode(tmp_path) == 0o755  # an existing parent is not touched
    assert not list(folder.glob(".*.tmp"))


def test_private_dir_tightens_an_existing_output_folder(tmp_path):
    (tmp_path / "out").mkdir(mode=0o755)
    os.chmod(tmp_path / "out", 0o755)
    private_dir(tmp_path / "out")
    assert mode(tmp_path / "out") == 0o700


def test_append_line_writes_whole_lines_under_concurrency(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"i": i, "pad": "x" * 3000}) for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda line: append_line(path, line, fsync=False), lines))
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(g["i"] for g in got) == list(range(200))


def test_audit_record_is_phi_free_and_salted():
    uid = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    entry = audit.record("ask", model_sha256="abc", study_id=uid, question="Any fracture?", answer_chars=42,
                         outcome="ok")
    audit.record("batch", model_sha256="abc", study_id=uid, question="Q2", answer_chars=0, outcome="error")
    text = audit.audit_path().read_text()
    assert uid not in text and "1CT1" not in text
    entries = audit.read_entries()
    assert [e["command"] for e in entries] == ["ask", "batch"]
    assert entries[0]["study"] == entries[1]["study"] == entry["study"]  # correlatable on this machine
    assert entry["time"].endswith("+00:00") and entry["user"]
    assert set(entry) == {"schema", "time", "user", "command", "model_sha256", "study", "question", "answer_chars",
                          "outcome"}
    salt = audit.audit_dir() / audit.SALT_NAME
    assert mode(audit.audit_path()) == 0o600 and mode(salt) == 0o600 and mode(audit.audit_dir()) == 0o700
    # a different installation (a different salt) gives a different reference for the same study
    salt.unlink()
    assert audit.study_ref(uid) != entry["study"]


def test_audit_log_is_appended_never_rewritten():
    audit.record("ask", model_sha256=None, study_id=None, question="q", answer_chars=1, outcome="ok")
    first = audit.audit_path().read_bytes()
    audit.record("ask", model_sha256=None, study_id=None, question="q2", answer_chars=2, outcome="ok")
    assert audit.audit_path().read_bytes().startswith(first)


def test_appending_tightens_an_existing_loose_file(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("{}\n")
    os.chmod(path, 0o644)
    append_line(path, "{}")
    assert mode(path) == 0o600 and path.read_text() == "{}\n{}\n"
