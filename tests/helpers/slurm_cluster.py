"""A real single-node SLURM cluster on this machine, from Debian packages (environment.md 6), for the cluster tests.

``LocalSlurm(accounting=...)`` installs what is missing (apt), starts munge, optionally MariaDB and slurmdbd (the
``sacct`` path), then slurmctld and slurmd with a fresh state folder, and stops every daemon it started by PID.
It refuses to touch a machine that already has ``/etc/slurm/slurm.conf`` (a real cluster's): the jobstep plugin
strips ``SLURM_CONF``, so the file must be at that default path (environment.md 6.4) and the cluster is this
machine's only one while it runs. By hand: ``python tests/helpers/slurm_cluster.py [--accounting]`` brings one up and
keeps it until Enter is pressed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
ACCOUNTING_PACKAGES = ("slurmdbd", "mariadb-server")
BINARIES = ("slurmctld", "slurmd", "sbatch", "munged", "mungekey")
ACCOUNTING_BINARIES = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb")
ETC = Path("/etc/slurm")
PARTITION = "debug"
DB_PORT, DBD_PORT = 3307, 6819
START_TIMEOUT_S = 60


class Unavailable(RuntimeError):
    """This machine cannot run the cluster (the reason is the message): the tests skip."""


def _wait(what: str, ready, timeout: float = START_TIMEOUT_S, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not come up in {timeout:.0f} s\n{tail}")
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


class LocalSlurm:
    """One node (this machine, all its CPUs, its memory less 2 GiB), one partition ``debug``, no GPUs."""

    def __init__(self, accounting: bool):
        self.accounting = accounting
        self.state: Path | None = None
        self.socket: Path | None = None  # munge's
        self.started: list[tuple[str, Callable[[], None]]] = []  # (daemon, how to stop it), in start order
        self.links: list[Path] = []

    # ---- bring-up ----------------------------------------------------------------------------------------------
    def up(self) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise Unavailable("a local SLURM cluster needs root (daemons, /etc/slurm/slurm.conf)")
        if (ETC / "slurm.conf").exists() and not (ETC / "slurm.conf").is_symlink():
            raise Unavailable(
                f"{ETC / 'slurm.conf'} exists: this machine has its own SLURM, which the tests leave alone"
            )
        self._install()
        self.state = Path(tempfile.mkdtemp(prefix="cmt-slurm-"))
        self.state.chmod(0o755)  # munge (its own user) reaches its socket folder through here
        try:
            self._start_munge()
            if self.accounting:
                self._start_mariadb()
                self._start_slurmdbd()
            self._start_slurm()
        except BaseException:
            self.down()
            raise
        return self

    def _install(self) -> None:
        needed = BINARIES + (ACCOUNTING_BINARIES if self.accounting else ())
        if all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in needed):
            return
        if not shutil.which("apt-get"):
            raise Unavailable(f"SLURM is not installed ({', '.join(needed)}) and there is no apt-get to install it")
        packages = PACKAGES + (ACCOUNTING_PACKAGES if self.accounting else ())
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            _run("apt-get", "update", "-q", env=env)
            _run("apt-get", "install", "-y", "-q", "--no-install-recommends", *packages, env=env)
        except subprocess.CalledProcessError as err:
            raise Unavailable(f"cannot install {' '.join(packages)}: {err.stderr[-500:]}") from err

    def _daemon(self, name: str, pid_file: Path, log: Path, *command: str) -> None:
        """Start a daemonising ``command``; wait for its pid file."""
        _run(*command)
        _wait(name, pid_file.exists, log=log)
        self.started.append((name, lambda: _stop(pid_file)))

    def _start_munge(self) -> None:
        folder = self.state / "munge"
        folder.mkdir()
        self.socket = folder / "munge.socket"
        key = folder / "munge.key"
        _run("mungekey", "--create", "--keyfile", str(key))
        shutil.chown(folder, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        folder.chmod(0o755)  # clients need execute permission on the socket's folder
        pid, log = folder / "munged.pid", folder / "munged.log"
        self._daemon(
            "munged", pid, log,
            "runuser", "-u", "munge", "--", "munged", f"--key-file={key}", f"--socket={self.socket}",
            f"--pid-file={pid}", f"--log-file={log}", f"--seed-file={folder / 'munged.seed'}",
        )  # fmt: skip

    def _start_mariadb(self) -> None:
        data, run = self.state / "mariadb", self.state / "mariadb-run"
        run.mkdir()
        _run(
            "mariadb-install-db",
            "--user=root",
            f"--datadir={data}",
            "--skip-test-db",
            "--auth-root-authentication-method=socket",
        )
        db_socket, pid, log = run / "mysqld.sock", run / "mariadbd.pid", run / "mariadbd.log"
        server = subprocess.Popen(
            ["mariadbd", "--user=root", f"--datadir={data}", f"--socket={db_socket}", f"--port={DB_PORT}",
             "--bind-address=127.0.0.1", f"--pid-file={pid}", f"--log-error={log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.started.append(("mariadbd", lambda: (server.terminate(), server.wait(timeout=60))))
        _wait("mariadbd", lambda: _listening(DB_PORT), log=log)
        sql = (
            "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        _run("mariadb", f"--socket={db_socket}", "-u", "root", "-e", sql)

    def _link(self, name: str, text: str, mode: int = 0o644) -> None:
        target = self.state / name
        target.write_text(text)
        target.chmod(mode)
        ETC.mkdir(parents=True, exist_ok=True)
        link = ETC / name
        if link.is_symlink():
            link.unlink()  # left by a cluster that was not stopped
        link.symlink_to(target)
        self.links.append(link)

    def _start_slurmdbd(self) -> None:
        pid, log = self.state / "slurmdbd.pid", self.state / "slurmdbd.log"
        self._link(
            "slurmdbd.conf",
            "\n".join([
                "AuthType=auth/munge", f"AuthInfo=socket={self.socket}", "DbdHost=localhost", f"DbdPort={DBD_PORT}",
                "SlurmUser=root", f"PidFile={pid}", f"LogFile={log}", "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1", f"StoragePort={DB_PORT}", "StorageUser=slurm", "StoragePass=slurm",
                "StorageLoc=slurm_acct_db", "",
            ]),
            mode=0o600,
        )  # fmt: skip
        self._daemon("slurmdbd", pid, log, "slurmdbd")
        _wait("slurmdbd", lambda: _listening(DBD_PORT), log=log)

    def _slurm_conf(self) -> str:
        host = socket.gethostname().split(".")[0]
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 2048
        if self.accounting:
            accounting = [
                "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                f"AccountingStoragePort={DBD_PORT}", f"AccountingStoragePass={self.socket}",
                "JobAcctGatherType=jobacct_gather/linux", "JobAcctGatherFrequency=5",
                "AccountingStoreFlags=job_comment",  # sacct shows the plugin's comment: rule_<name>_wildcards_...
            ]  # fmt: skip
        else:
            accounting = ["AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none"]
        s = self.state
        return "\n".join([
            "ClusterName=local", f"SlurmctldHost={host}(127.0.0.1)", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}", "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={s / 'ctld'}", f"SlurmdSpoolDir={s / 'spool'}",
            f"SlurmctldPidFile={s / 'slurmctld.pid'}", f"SlurmdPidFile={s / 'slurmd.pid'}",
            f"SlurmctldLogFile={s / 'slurmctld.log'}", f"SlurmdLogFile={s / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",  # no cgroups here
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "JobCompType=jobcomp/none", "MpiDefault=none", "ReturnToService=2",
            "MinJobAge=300",  # the plugin's squeue status mode needs finished jobs visible for >= 120 s
            *accounting,
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP", "",
        ])  # fmt: skip

    def _start_slurm(self) -> None:
        for folder in ("ctld", "spool"):
            (self.state / folder).mkdir()
        self._link("slurm.conf", self._slurm_conf())
        self._daemon("slurmctld", self.state / "slurmctld.pid", self.state / "slurmctld.log", "slurmctld")
        self._daemon("slurmd", self.state / "slurmd.pid", self.state / "slurmd.log", "slurmd")

        def idle() -> bool:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            return done.returncode == 0 and done.stdout.strip() == "idle"

        _wait("the node (sinfo: idle)", idle, log=self.state / "slurmd.log")

    # ---- shut-down ---------------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every daemon this object started (by PID, last started first) and remove its /etc/slurm links."""
        for _, stop in reversed(self.started):
            stop()
        self.started = []
        for link in self.links:
            link.unlink(missing_ok=True)
        self.links = []
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> "LocalSlurm":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


def _stop(pid_file: Path, timeout: float = 30) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounting", action="store_true", help="with slurmdbd and MariaDB (the sacct path)")
    args = parser.parse_args()
    with LocalSlurm(args.accounting) as cluster:
        print(f"SLURM is up (state in {cluster.state}); `sinfo`, `sbatch`, `squeue` work. Press Enter to stop it.")
        input()


if __name__ == "__main__":
    main()
