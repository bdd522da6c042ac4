"""``twistd -n tlsotp-server --workers 2 --database postgresql://...``: the workers share a
PostgreSQL database instead of the data dir's SQLite file.

The same harness as tests/process/test_workers.py (a TTP in this process, the server a real
twistd subprocess, real clients), on a PostgreSQL server started from the binaries on the
machine. Each worker opens its own connection pool; a decision takes the pair's advisory lock
(``tlsotp.otp.postgres_store.lock_pair``), so single use and lockout hold across workers as they
do across servers. The database needs a password here (SCRAM for the server's role), which the
supervisor reads from ``--database-password-file`` and hands each worker on its stdin: a worker
without it could not connect, and the start would fail.
"""

from __future__ import annotations

from pathlib import Path

from tests.postgres_cluster import new_cluster
from tests.process.test_daemon_drain import Daemon
from tests.process.test_workers import WorkersHarness, serving
from tlsotp.services.otp_client import ClientSettings

ROLE = "bank_server"
PASSWORD = "correct horse battery staple"


class WorkersOnPostgresTests(WorkersHarness):
    def database(self) -> tuple[str, Path]:
        """A database only ``ROLE`` with ``PASSWORD`` may use; its URL and the password file."""
        import psycopg

        cluster = new_cluster(self)
        url = cluster.create_database("workers")
        name = url.split("/")[3].split("?")[0]
        with psycopg.connect(cluster.conninfo(), autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            connection.execute(f'ALTER DATABASE "{name}" OWNER TO {ROLE}')
            hba = cluster.data / "pg_hba.conf"
            hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())
            connection.execute("SELECT pg_reload_conf()")
        password_file = Path(self.mktemp()).resolve()
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(PASSWORD + "\n")
        password_file.chmod(0o600)
        return url.replace(f"//{url.split('//')[1].split('@')[0]}@", f"//{ROLE}@"), password_file

    async def start_on_postgres(self, *extra: str) -> tuple[Daemon, str, ClientSettings]:
        url, password_file = self.database()
        server, endpoint, settings = await self.start(
            "--database", url, "--database-password-file", str(password_file), *extra
        )
        for pid in serving(server.log).values():
            # The password reached the workers (they serve: each connected), on no command line
            # and in no environment.
            for part in ("cmdline", "environ"):
                self.assertNotIn(PASSWORD.encode(), Path(f"/proc/{pid}/{part}").read_bytes())
        return server, endpoint, settings

    async def test_twenty_parallel_confirmations_of_one_code_over_two_workers_accept_exactly_one(self) -> None:
        server, endpoint, settings = await self.start_on_postgres()
        await self.check_twenty_parallel_confirmations_accept_exactly_one(server, endpoint, settings)

    async def test_wrong_guesses_spread_over_workers_lock_the_transaction_after_max_attempts(self) -> None:
        server, endpoint, settings = await self.start_on_postgres("--max-attempts", "3")
        await self.check_wrong_guesses_lock_after_three(server, endpoint, settings)
