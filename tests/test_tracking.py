"""W&B never blocks a job: no API key and a terminal attached still means the run finishes."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.experiment_scripts import REPO, cell_dir, clean_env, write_script


def run_on_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal (as in an interactive shell on a login
    node); (exit status or None if it had to be killed at ``timeout``, everything it printed)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process ended
                    data = b""
                if data:
                    chunks.append(data)
                    continue
            if proc.poll() is not None and not ready:
                break
            if ready and not data:
                break
        try:  # the terminal closes a moment before the process has exited
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
            proc.kill()
            proc.wait(timeout=30)
        return rc, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)


@pytest.mark.slow
def test_wandb_online_without_key_on_a_terminal_never_waits_for_a_login(tmp_path):
    env = clean_env(WANDB_MODE="online", HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandbcfg"),
                    NETRC=str(tmp_path / "no-netrc"), TERM="xterm")
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_SILENT"):
        env.pop(var, None)
    script = write_script(tmp_path)
    out = tmp_path / "out"
    rc, text = run_on_terminal([sys.executable, str(script), "--quiet", "--out", str(out), "--variant", "32s",
                                "--seed", "0", "--logger", "wandb"], env, timeout=150)
    assert rc == 0, f"exit status {rc} (None: still waiting after 150 s):\n{text[-3000:]}"
    assert "Enter your choice" not in text
    assert "OFFLINE" in text and "WANDB_MODE=online" in text  # says it overrode the setting
    d = cell_dir(out)
    assert (d / "metrics.json").exists()
    assert list((d / "wandb").glob("offline-run-*/run-*.wandb")), "offline run file missing"
